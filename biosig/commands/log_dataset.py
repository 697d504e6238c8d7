"""`log_dataset`: build or read a windowed dataset, write it once (content-addressed) and log it to MLflow
with a profile and example plots. With `output=DIR/` (or an s3:// prefix) the dataset is sharded and built
in parallel (biosig.data.build); `dataset finalize` completes a build made of shard=i/n parts."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from biosig.commands.configs import DatasetConfig, FinalizeDatasetConfig
from biosig.data import WindowSet
from biosig.data.build import build, finalize, group_problems, groups_built, make_plan
from biosig.data.profile import plot_examples, profile, sharded_profile
from biosig.data.shards import Manifest
from biosig.errors import DataError, FileProblem
from biosig.logs import get_logger
from biosig.tracking.datasets import LoggedDataset, log_data_errors, log_sharded, use_dataset
from biosig.tracking.run import RunContext, tracked_run
from biosig.tracking.tags import DATASET_PART_TAG

log = get_logger(__name__)


def run_log_dataset(config: DatasetConfig, *, nested: bool = False) -> LoggedDataset | None:
    """The `log_dataset` command: one run, one parquet (or sharded dataset), one dataset input. A shard=i/n
    part logs its records' problems and returns None: `dataset finalize` logs the dataset."""
    if config.sharded:
        return _build_sharded(config, nested)
    with tracked_run("log_dataset", config, nested=nested) as ctx:
        logged = use_dataset(ctx, config.source, config.source_options(), kind=config.kind,
                             output_dir=config.output_dir, output=config.output, context=config.context)
        ctx.name_run(f"log_dataset {logged.name}")
        _log_profile(ctx, logged.windows)
        ws = logged.windows
        log.info(f"dataset {logged.name}: {ws.n_windows} windows × {ws.n_channels} channels × {ws.n_samples} "
                 f"samples -> {logged.path} (digest {ws.digest[:12]}, run {ctx.run_id})")
        return logged


def _build_sharded(config: DatasetConfig, nested: bool) -> LoggedDataset | None:
    root = config.output if config.output.startswith("s3://") else str(Path(config.output).resolve())
    index, count = config.part()
    with tracked_run("log_dataset", config, nested=nested,
                     tags={DATASET_PART_TAG: config.shard} if config.shard else None) as ctx:
        plan = make_plan(config.source, config.source_options(), kind=config.kind, shard_rows=config.shard_rows,
                         records_per_shard=config.records_per_shard)
        workers = config.workers or os.cpu_count() or 1
        where = f"part {index}/{count} of " if count > 1 else ""
        log.info(f"building {where}{root}: {len(plan.groups)} group(s) of {config.source}, {workers} worker(s)")

        def progress(done: int, total: int) -> None:
            if done == total or done % max(1, total // 10) == 0:
                log.info(f"  {done}/{total} group(s) written")

        try:
            result = build(plan, root, workers=workers, part=(index, count), on_group=progress)
        except DataError as exc:  # a full or read-only disk mid-build: what is kept, and how to go on
            done = groups_built(plan, root)
            raise DataError(f"{exc}; the build stopped with {done} of {len(plan.groups)} group(s) finished (kept: "
                            "the same command resumes from them once the disk can take the rest)") from None
        if result.skipped:
            log.info(f"  {len(result.skipped)} group(s) were already built (an earlier, interrupted build): kept")
        if result.pending:
            ctx.name_run(f"log_dataset {where}{root}")
            log_data_errors(ctx, group_problems(plan, root, result.built + result.skipped))
            log.info(f"{where}{root} is built; {len(result.pending)} group(s) of other parts are not yet: run them, "
                     f"then `biosig dataset finalize {root}`")
            return None
        manifest, problems = finalize(root)
        return _log_finalized(ctx, manifest, problems, config.context)


def run_finalize_dataset(config: FinalizeDatasetConfig, *, nested: bool = False) -> LoggedDataset:
    """`biosig dataset finalize PREFIX`: the manifest of a build made of parts, logged like log_dataset."""
    root = config.prefix if config.prefix.startswith("s3://") else str(Path(config.prefix).resolve())
    with tracked_run("log_dataset", config, nested=nested) as ctx:
        manifest, problems = finalize(root)
        return _log_finalized(ctx, manifest, problems, config.context)


def _log_finalized(ctx: RunContext, manifest: Manifest, problems: list[FileProblem], context: str) -> LoggedDataset:
    if problems:
        log_data_errors(ctx, problems)
    sample = log_sharded(ctx, manifest, context=context)
    ctx.name_run(f"log_dataset {manifest.name}")
    _log_profile(ctx, sample, sharded_profile(manifest, sample))
    size = sum(s.bytes for s in manifest.shards)
    ctx.log_metrics({"shards": len(manifest.shards), "dataset_bytes": size})
    log.info(f"dataset {manifest.name}: {manifest.n_windows} windows in {len(manifest.shards)} shard(s), "
             f"{size / 2**30:.2f} GiB -> {manifest.root} (digest {manifest.digest[:12]}, run {ctx.run_id})")
    return LoggedDataset(name=manifest.name, path=Path(manifest.root), digest=manifest.digest, run_id=ctx.run_id,
                         windows=None, manifest=manifest,
                         location=manifest.root if manifest.root.startswith("s3://") else "")


def _log_profile(ctx: RunContext, ws: WindowSet, prof: dict | None = None) -> None:
    prof = prof or profile(ws)
    ctx.log_dict(prof, "dataset/profile.json")
    metrics = {"n_windows": prof["n_windows"], "n_subjects": prof["n_subjects"]}
    metrics.update({f"class_fraction.{k}": v["fraction"] for k, v in prof["class_balance"].items()})
    ctx.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        for png in plot_examples(ws, Path(tmp)):
            ctx.log_artifact(png, "dataset")
