"""`log_dataset`: build or read a windowed dataset, write it once (content-addressed) and log it to MLflow
with a profile and example plots."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Literal

from biosig.config import BaseConfig, require_range
from biosig.data import SourceOptions, WindowSet
from biosig.data.naming import check_kind
from biosig.data.profile import plot_examples, profile
from biosig.errors import ConfigError
from biosig.logs import get_logger
from biosig.tracking.datasets import LoggedDataset, use_dataset
from biosig.tracking.run import RunContext, tracked_run

log = get_logger(__name__)


@dataclasses.dataclass
class DatasetConfig(BaseConfig):
    """`log_dataset`: build or read a windowed dataset, write the primary parquet, log it."""

    SOURCE_KEYS = ("source",)
    FILE_KEYS = ("preprocess", "labels")

    source: str = "synthetic:ppg-ecg"
    kind: str = "primary"
    output_dir: str = "data"
    output: str = ""  # explicit .parquet path; default {output_dir}/{dataset name}.parquet
    n_subjects: int = 0  # synthetic sizes; 0 keeps the source's default
    windows_per_subject: int = 0
    window_s: float = 0.0
    good_fraction: float = 0.24
    channels: list[str] | None = None  # npz files without a channels array
    fs: float | None = None  # npz files without fs; Muse CSV sampling rate (default 256)
    labels: str = ""  # Muse: participants CSV with Participant,Remission (default DIR/participants.csv)
    subs_per_parent: int = 4  # Muse: consecutive sub-windows per parent window
    preprocess: str = ""  # butppg:/vitaldb: sources: preprocessing YAML (resampling, filters, gates)
    missing_acc: Literal["exclude", "zero"] = "exclude"  # BUT PPG records without ACC
    ppg_colour: int = 0  # BUT PPG: which of the 3 PPG colour channels
    context: str = "primary"  # MLflow dataset input context

    def validate(self) -> None:
        super().validate()
        require_range("good_fraction", self.good_fraction, 0, 1, low_open=True, high_open=True)
        for key in ("n_subjects", "windows_per_subject", "window_s"):
            require_range(key, getattr(self, key), 0)
        require_range("subs_per_parent", self.subs_per_parent, 1)
        check_kind(self.kind)
        if self.output and not self.output.endswith(".parquet"):
            raise ConfigError(f"config key 'output' must end in .parquet, got {self.output!r}")

    def source_options(self) -> SourceOptions:
        return SourceOptions(n_subjects=self.n_subjects, windows_per_subject=self.windows_per_subject,
                             window_s=self.window_s, good_fraction=self.good_fraction,
                             channels=self.channels, fs=self.fs, labels=self.labels,
                             subs_per_parent=self.subs_per_parent, preprocess=self.preprocess,
                             missing_acc=self.missing_acc, ppg_colour=self.ppg_colour, seed=self.seed)


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
