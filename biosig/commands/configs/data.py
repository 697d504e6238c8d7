"""`log-dataset`, `dataset finalize` and `prepare-splits`: what a dataset is built from and how it is split."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Literal

from biosig.config import BaseConfig, option, require_range
from biosig.data.channels import check_channels
from biosig.data.naming import check_kind
from biosig.data.sources import SourceOptions
from biosig.errors import ConfigError

#: windows longer than an hour are refused: biosig's models take windows of seconds to minutes
MAX_WINDOW_S = 3600.0


@dataclasses.dataclass
class DatasetConfig(BaseConfig):
    """`log_dataset`: build or read a windowed dataset, write the primary parquet, log it."""

    SOURCE_KEYS = ("source",)
    FILE_KEYS = ("preprocess", "labels")

    source: str = "synthetic:ppg-ecg"
    kind: str = "primary"
    output_dir: str = "data"
    output: str = option("", "explicit .parquet path (default {output_dir}/{dataset name}_{digest}.parquet), or a directory or "
                         "s3:// prefix ending in '/': a sharded dataset (parquet shards + manifest.json) built in parallel")
    n_subjects: int | None = option(None, "synthetic sizes (default: the source's own)")
    windows_per_subject: int | None = None
    window_s: float | None = option(None, "seconds per window (default: the source's own)")
    good_fraction: float = 0.24
    channels: list[str] | None = option(None, "npz files without a channels array")
    fs: float | None = option(None, "npz files without fs; Muse CSV sampling rate (default 256)")
    labels: str = option("", "Muse: participants CSV with Participant,Remission (default DIR/participants.csv)")
    subs_per_parent: int = option(4, "Muse: consecutive sub-windows per parent window")
    preprocess: str = option("", "butppg:/vitaldb: sources: preprocessing YAML (resampling, filters, gates)")
    missing_acc: Literal["exclude", "zero"] = option("exclude", "BUT PPG records without ACC")
    ppg_colour: int = option(0, "BUT PPG: which of the 3 PPG colour channels")
    context: str = option("primary", "MLflow dataset input context")
    workers: int = option(0, "sharded output: processes building groups of records at once (0: one per CPU)")
    shard: str = option("", "sharded output across machines: build slice i of n (0-based i/n, e.g. a Slurm array index), then "
                        "`biosig dataset finalize PREFIX` once every slice is done")
    shard_rows: int = option(32768, "sharded output: windows per shard at most (row groups of 2048)")
    records_per_shard: int = option(0, "sharded output: records per build group (0: 512 for BUT PPG, 4 for VitalDB)")

    @property
    def sharded(self) -> bool:
        return self.output.endswith("/")

    def part(self) -> tuple[int, int]:
        if not self.shard:
            return 0, 1
        index, count = (int(v) for v in self.shard.split("/"))
        return index, count

    def validate(self) -> None:
        super().validate()
        if self.shard and not re.fullmatch(r"\d+/[1-9]\d*", self.shard):
            raise ConfigError(f"config key 'shard' must be i/n (0 <= i < n), got {self.shard!r}")
        if self.shard and not self.part()[0] < self.part()[1]:
            raise ConfigError(f"config key 'shard' must be i/n with 0 <= i < n, got {self.shard!r}")
        if self.shard and not self.sharded:
            raise ConfigError("config key 'shard' builds part of a sharded dataset: set output to a directory or "
                              "s3:// prefix ending in '/'")
        require_range("workers", self.workers, 0)
        require_range("shard_rows", self.shard_rows, 1)
        require_range("records_per_shard", self.records_per_shard, 0)
        require_range("good_fraction", self.good_fraction, 0, 1, low_open=True, high_open=True)
        for key in ("n_subjects", "windows_per_subject"):
            if getattr(self, key) is not None:
                require_range(key, getattr(self, key), 0, low_open=True)
        if self.window_s is not None:
            require_range("window_s", self.window_s, 0, MAX_WINDOW_S, low_open=True)
        if self.fs is not None:
            require_range("fs", self.fs, 0, low_open=True)
        if self.channels is not None:
            if not self.channels:
                raise ConfigError("config key 'channels' is empty: name the channels (e.g. PPG,ECG) or leave it out")
            check_channels(self.channels, "config key 'channels'")
        if self.source.startswith("synthetic:") and (self.channels is not None or self.fs is not None):
            key = "channels" if self.channels is not None else "fs"
            raise ConfigError(f"config key '{key}' describes .npz files (or Muse CSVs) that lack it; "
                              f"{self.source} sets its own channels and rate")
        require_range("subs_per_parent", self.subs_per_parent, 1)
        check_kind(self.kind)
        if self.output and not self.output.endswith((".parquet", "/")):
            raise ConfigError(f"config key 'output' must end in .parquet (one file) or '/' (a sharded dataset), "
                              f"got {self.output!r}")

    def source_options(self) -> SourceOptions:
        return SourceOptions(n_subjects=self.n_subjects or 0, windows_per_subject=self.windows_per_subject or 0,
                             window_s=self.window_s or 0.0, good_fraction=self.good_fraction,
                             channels=self.channels, fs=self.fs, labels=self.labels,
                             subs_per_parent=self.subs_per_parent, preprocess=self.preprocess,
                             missing_acc=self.missing_acc, ppg_colour=self.ppg_colour, seed=self.seed)


@dataclasses.dataclass
class FinalizeDatasetConfig(BaseConfig):
    """`dataset finalize`: write manifest.json of a sharded dataset whose parts were built separately, and log it."""

    prefix: str = option("", "the output directory or s3:// prefix the shard=i/n parts were built into")
    context: str = option("primary", "MLflow dataset input context")

    def validate(self) -> None:
        super().validate()
        if not self.prefix:
            raise ConfigError("config key 'prefix' is required: the directory or s3:// prefix of the built parts")
        if not self.prefix.startswith("s3://") and not Path(self.prefix).is_dir():
            raise ConfigError(f"config key 'prefix': {self.prefix} is not a directory")


@dataclasses.dataclass
class PrepareSplitsConfig(BaseConfig):
    """`prepare_splits`: subject-level train/val/test manifests (or k folds) for a dataset."""

    SOURCE_KEYS = ("data",)

    data: str = option("synthetic:quality", "source spec or .parquet path")
    n_subjects: int = 0
    windows_per_subject: int = 0
    data_dir: str = "data"
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    cv: int = option(0, "0: one split; k >= 2: k folds around a fixed test split")
    use_recommended: bool = option(True, "honour a recommended_split column when the parquet has one")
    output_dir: str = "data/splits"

    def validate(self) -> None:
        super().validate()
        require_range("val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True)
        require_range("test_fraction", self.test_fraction, 0, 1, high_open=True)
        if self.cv < 0 or self.cv == 1:
            raise ConfigError(f"config key 'cv' must be 0 (one split) or at least 2 folds, got {self.cv}")
