"""`log_dataset`: build or read a windowed dataset, write it once (content-addressed) and log it to MLflow
with a profile and example plots."""

from __future__ import annotations

import tempfile
from pathlib import Path

from biosig.commands.configs import DatasetConfig
from biosig.data import WindowSet
from biosig.data.profile import plot_examples, profile
from biosig.logs import get_logger
from biosig.tracking.datasets import LoggedDataset, use_dataset
from biosig.tracking.run import RunContext, tracked_run

log = get_logger(__name__)


def run_log_dataset(config: DatasetConfig, *, nested: bool = False) -> LoggedDataset:
    """The `log_dataset` command: one run, one parquet, one dataset input."""
    with tracked_run("log_dataset", config, nested=nested) as ctx:
        logged = use_dataset(ctx, config.source, config.source_options(), kind=config.kind,
                             output_dir=config.output_dir, output=config.output, context=config.context)
        ctx.name_run(f"log_dataset {logged.name}")
        _log_profile(ctx, logged.windows)
        ws = logged.windows
        log.info(f"dataset {logged.name}: {ws.n_windows} windows × {ws.n_channels} channels × {ws.n_samples} "
                 f"samples -> {logged.path} (digest {ws.digest[:12]}, run {ctx.run_id})")
        return logged


def _log_profile(ctx: RunContext, ws: WindowSet) -> None:
    prof = profile(ws)
    ctx.log_dict(prof, "dataset/profile.json")
    metrics = {"n_windows": prof["n_windows"], "n_subjects": prof["n_subjects"]}
    metrics.update({f"class_fraction.{k}": v["fraction"] for k, v in prof["class_balance"].items()})
    ctx.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        for png in plot_examples(ws, Path(tmp)):
            ctx.log_artifact(png, "dataset")
