"""Windowed datasets in a run: load a source, write it once under its content-addressed name, and record
it as an MLflow dataset input (explicit content digest, the file's URI as source) plus discovery tags."""

from __future__ import annotations

import csv
import dataclasses
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import register_dataset_source, resolve_dataset_source
from mlflow.data.numpy_dataset import NumpyDataset

from biosig.data import SourceOptions, WindowSet, dataset_name, load_source, write_parquet
from biosig.data.parquet_io import stored_digest
from biosig.data.profile import class_name
from biosig.data.shards import Manifest, is_sharded, read_manifest, read_sharded, sample_windows
from biosig.data.storage import fetch
from biosig.errors import DataError, FileProblem
from biosig.logs import get_logger
from biosig.tracking.dataset_store import find_dataset, is_portable, publish
from biosig.tracking.run import RunContext
from biosig.tracking.tags import (
    DATASET_CHANNELS_TAG,
    DATASET_DIGEST_TAG,
    DATASET_ERRORS_TAG,
    DATASET_MODALITY_TAG,
    DATASET_NAME_TAG,
    DATASET_URI_TAG,
    DATASET_WARNINGS_TAG,
)

log = get_logger(__name__)

DIGEST_IN_FILE_NAME = 12
MLFLOW_DIGEST_LENGTH = 16  # MLflow's digest column is short; the full sha256 goes into a tag
#: Content digest of a run's test split: promotion compares champions only on the same one.


@dataclasses.dataclass
class LoggedDataset:
    name: str
    path: Path
    digest: str
    run_id: str
    windows: WindowSet | None  # None: a sharded dataset read by streaming (see `manifest`)
    manifest: Manifest | None = None
    location: str = ""  # the dataset's URI when `path` is not it (an s3:// prefix)
    recorded: str = ""  # the portable URI the run recorded (team server artifact store, $BIOSIG_DATA_ROOT)

    @property
    def uri(self) -> str:
        """What another command is given to read the same data: a local path or an s3:// URI."""
        return self.location or str(Path(self.path).resolve())

    @property
    def channels(self) -> list[str]:
        return list(self.windows.channels) if self.windows is not None else self.manifest.channels

    @property
    def label_name(self) -> str:
        return self.windows.label_name if self.windows is not None else self.manifest.schema["label_column"]

    @property
    def input_spec(self) -> dict[str, Any]:
        """The windows it holds (channels, fs, samples), in memory or sharded: a model's expected input."""
        source = self.windows if self.windows is not None else self.manifest
        return {"channels": self.channels, "fs": source.fs, "n_samples": source.n_samples}

    @property
    def mlflow_ref(self) -> tuple[str, str]:
        """(name, digest) as the run's MLflow dataset input records them: what model metrics point to."""
        return self.name, self.digest[:MLFLOW_DIGEST_LENGTH]


def use_dataset(ctx: RunContext, source: str, options: SourceOptions, *, kind: str = "primary",
                output_dir: str = "data", output: str = "", context: str = "primary",
                stream: bool = False) -> LoggedDataset:
    """Load `source` into the run as an MLflow dataset input whose source is a parquet file: a parquet
    source is used in place; synthetic and npz sources are written once to the content-addressed
    `{output_dir}/{name}_{digest12}.parquet` (or `output`), never replacing different content. A sharded
    dataset is used in place too, read whole, or (`stream`) left on disk for a streaming reader."""
    if is_sharded(source) and not output:
        return use_sharded(ctx, source, context=context, stream=stream)
    source, recorded = find_dataset(source, output_dir)  # a name, digest or another machine's path: found here
    errors: list[FileProblem] = []
    ws = load_source(source, options, errors).sorted()  # files hold sorted rows: the digest describes the file
    if errors:
        log_data_errors(ctx, errors)
    name = dataset_name(ws, kind)
    if source.endswith(".parquet") and source.startswith("s3://") and not output:
        log_windowset(ctx, ws, name=name, uri=source, context=context)  # the object in S3 is the source
        return LoggedDataset(name=name, path=fetch(source), digest=ws.digest, run_id=ctx.run_id, windows=ws)
    if source.endswith(".parquet") and not output:
        path = Path(source)
    else:
        path = Path(output) if output else Path(output_dir) / content_file_name(name, ws.digest)
        _write_once(ctx, ws, path, key="output" if output else "output_dir")
    uri = recorded or publish(ctx, path, ws.digest)  # what a second machine reads: see tracking.dataset_store
    log_windowset(ctx, ws, name=name, uri=uri, context=context)
    return LoggedDataset(name=name, path=path, digest=ws.digest, run_id=ctx.run_id, windows=ws,
                         recorded=uri if is_portable(uri) else "")


def follow_dataset(source: str, options: SourceOptions, *, stream: bool = False) -> LoggedDataset:
    """The rows a torchrun follower trains on: those the leader's `use_dataset` logs (same source, same
    sorted order), read without recording anything; a sharded dataset stays on disk when `stream`."""
    if is_sharded(source):
        manifest = read_manifest(source)
        return LoggedDataset(name=manifest.name, path=Path(manifest.root), digest=manifest.digest, run_id="",
                             windows=None if stream else read_sharded(source), manifest=manifest)
    ws = load_source(source, options, []).sorted()  # files the leader skips (data_errors.csv) are skipped here too
    return LoggedDataset(name=dataset_name(ws), path=Path(source), digest=ws.digest, run_id="", windows=ws)


def content_file_name(name: str, digest: str) -> str:
    """`{conventional name}_{first 12 hex of the content digest}.parquet`: another seed, size or source
    gives another file, so no run's recorded digest is ever invalidated by a later run."""
    return f"{name}_{digest[:DIGEST_IN_FILE_NAME]}.parquet"


def _write_once(ctx: RunContext, ws: WindowSet, path: Path, *, key: str) -> None:
    """Write `ws` to `path` unless the file already holds exactly this content; a file holding other
    content is never replaced. A file this run created is removed again if the run fails."""
    if path.exists():
        existing = stored_digest(path)
        if existing != ws.digest:
            held = f"dataset {existing[:12]}" if existing else "a file that is not a biosig dataset"
            raise DataError(f"config key '{key}': {path} already holds {held}, not this one ({ws.digest[:12]}); "
                            "datasets are never replaced: choose another path or remove the file")
        return
    write_parquet(ws, path)
    ctx.on_failure(lambda: path.unlink(missing_ok=True))


def use_sharded(ctx: RunContext, root: str, *, context: str, stream: bool) -> LoggedDataset:
    manifest = read_manifest(root)
    windows = None if stream else read_sharded(root)
    log_sharded(ctx, manifest, context=context)
    return LoggedDataset(name=manifest.name, path=Path(manifest.root), digest=manifest.digest, run_id=ctx.run_id,
                         windows=windows, manifest=manifest,
                         location=manifest.root if manifest.root.startswith("s3://") else "")


PROFILE_SAMPLE = 512  # windows a sharded dataset's input profile and example plots are computed from


def log_sharded(ctx: RunContext, manifest: Manifest, *, context: str) -> WindowSet:
    """Record a sharded dataset as an MLflow dataset input: source = its prefix, digest = the manifest's,
    profile = exact counts from the manifest plus signal figures from a sample. Returns the sample."""
    sample = sample_windows(manifest, PROFILE_SAMPLE)
    summary = sharded_summary(manifest, sample)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = WindowDataset(sample, source=resolve_dataset_source(manifest.root), name=manifest.name,
                                digest=manifest.digest[:MLFLOW_DIGEST_LENGTH], summary=summary)
    mlflow.log_input(dataset, context=context, tags={"modality": sample.modality, "shards": str(len(manifest.shards)),
                                                     "kind": manifest.name.rsplit("_", 1)[-1]})
    ctx.set_tags({DATASET_NAME_TAG: manifest.name, DATASET_DIGEST_TAG: manifest.digest, DATASET_URI_TAG: manifest.root,
                  DATASET_MODALITY_TAG: sample.modality, DATASET_CHANNELS_TAG: ",".join(manifest.channels)})
    return sample


def sharded_summary(manifest: Manifest, sample: WindowSet) -> dict[str, Any]:
    total = manifest.n_windows
    balance = ", ".join(f"{class_name(sample, label)} {count} ({count / total:.0%})"
                        for label, count in manifest.label_counts().items())
    return {"windows": total, "channels": ", ".join(manifest.channels), "fs_hz": manifest.fs,
            "window_length": f"{manifest.n_samples} samples ({manifest.n_samples / manifest.fs:g} s)",
            "subjects": len(manifest.subject_labels()), "class_balance": balance or "unlabelled",
            "modality": sample.modality, "shards": len(manifest.shards),
            "size": f"{sum(s.bytes for s in manifest.shards) / 2**20:.1f} MiB",
            "profiled_from": f"a sample of {sample.n_windows} windows"}


def log_data_errors(ctx: RunContext, problems: list[FileProblem]) -> None:
    """Unreadable files do not fail the run: they (kind=error), files read with repairs (kind=warning:
    dropped NaN rows, gaps) and windows dropped by quality gates (kind=rejected, with counts) are listed in
    dataset/data_errors.csv, counted in tags, and the rejections logged as `rejected_windows.<reason>`."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "data_errors.csv"
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "kind", "error", "count"])
            writer.writerows([e.file, e.kind, e.error, e.count] for e in problems)
        ctx.log_artifact(path, "dataset")
    errors = [e for e in problems if e.kind == "error"]
    warned = [e for e in problems if e.kind == "warning"]
    rejected: dict[str, int] = {}
    for e in problems:
        if e.kind == "rejected":
            rejected[e.error] = rejected.get(e.error, 0) + e.count
    if rejected:
        ctx.log_metrics({"rejected_windows": sum(rejected.values()),
                         **{f"rejected_windows.{reason.replace(':', '.')}": n for reason, n in rejected.items()}})
        log.warning(f"biosig: note: quality gates rejected {sum(rejected.values())} window(s): "
                    + ", ".join(f"{r} {n}" for r, n in sorted(rejected.items(), key=lambda kv: -kv[1])))
    ctx.set_tags({DATASET_ERRORS_TAG: len(errors), DATASET_WARNINGS_TAG: len(warned)})
    if errors:
        log.warning(f"biosig: warning: {len(errors)} file(s) could not be read and were skipped; see dataset/data_errors.csv "
                    f"(first: {errors[0].file}: {errors[0].error})")
    for problem in warned:
        log.warning(f"biosig: note: {problem.file}: {problem.error}")


class WindowDataset(NumpyDataset):
    """MLflow's numpy dataset whose profile (the UI's dataset panel) reads like a methods section:
    channels, sampling rate, window length, subjects and class balance, not only array shapes."""

    def __init__(self, ws: WindowSet, *, source, name: str, digest: str,
                 summary: dict[str, Any] | None = None) -> None:
        self._summary = summary or dataset_summary(ws)
        self._sampled = summary is not None  # the arrays are a sample: their shapes are not the dataset's
        super().__init__(features=ws.signals, source=source, targets=ws.labels, name=name, digest=digest)

    @property
    def profile(self) -> dict[str, Any]:
        return dict(self._summary) if self._sampled else {**self._summary, **(super().profile or {})}


def dataset_summary(ws: WindowSet) -> dict[str, Any]:
    """One readable value per key (the UI cuts nested values at 80 characters)."""
    labels, counts = np.unique(ws.labels, return_counts=True)
    balance = ", ".join(f"{class_name(ws, int(label))} {count} ({count / ws.n_windows:.0%})"
                        for label, count in zip(labels, counts))
    return {"windows": ws.n_windows, "channels": ", ".join(ws.channels), "fs_hz": ws.fs,
            "window_length": f"{ws.n_samples} samples ({ws.window_s:g} s)",
            "subjects": int(np.unique(ws.subject).size), "class_balance": balance or "unlabelled",
            "modality": ws.modality}


class ArtifactStoreSource(DatasetSource):
    """A dataset file in a tracking server's artifact store (`mlflow-artifacts:/…`, `runs:/…`): MLflow
    registers sources for s3://, gs://, local paths and http(s), not for its own proxied artifact URIs."""

    def __init__(self, uri: str) -> None:
        self.uri = uri

    @staticmethod
    def _get_source_type() -> str:
        return "mlflow_artifacts"

    def load(self, dst_path: str | None = None) -> str:
        return mlflow.artifacts.download_artifacts(artifact_uri=self.uri, dst_path=dst_path)

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return isinstance(raw_source, str) and raw_source.startswith(("mlflow-artifacts:", "runs:/"))

    @classmethod
    def _resolve(cls, raw_source: Any) -> "ArtifactStoreSource":
        return cls(raw_source)

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> "ArtifactStoreSource":
        return cls(source_dict["uri"])


register_dataset_source(ArtifactStoreSource)


def log_windowset(ctx: RunContext, ws: WindowSet, *, name: str, uri: str, context: str) -> None:
    """Record `ws` as an MLflow dataset input of the active run, plus discovery tags."""
    with warnings.catch_warnings():
        # MLflow registers its local artifact source class twice and warns about its own ambiguity.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
        dataset = WindowDataset(ws, source=resolve_dataset_source(uri), name=name,
                                digest=ws.digest[:MLFLOW_DIGEST_LENGTH])
    mlflow.log_input(dataset, context=context, tags={"modality": ws.modality, "kind": name.rsplit("_", 1)[-1]})
    ctx.set_tags({
        DATASET_NAME_TAG: name,
        DATASET_DIGEST_TAG: ws.digest,
        DATASET_URI_TAG: uri,
        DATASET_MODALITY_TAG: ws.modality,
        DATASET_CHANNELS_TAG: ",".join(ws.channels),
    })
