"""`evaluate`, `compare`, `promote` and `main`: keys of the commands that test, compare and promote models."""

from __future__ import annotations

import dataclasses
from typing import Literal

from biosig.config import BaseConfig, option, require_range
from biosig.errors import ConfigError, DataError


@dataclasses.dataclass
class EvaluateConfig(BaseConfig):
    """`evaluate`: window- and subject-level metrics of a registered model, optional calibration."""

    SOURCE_KEYS = ("data",)

    model: str = option("", "NAME@alias, NAME/3, models:/… (bare NAME: @candidate)")
    data: str = option("", "source spec or .parquet; empty: the dataset the model was fine-tuned on")
    n_subjects: int = 0
    windows_per_subject: int = 0
    data_dir: str = "data"
    val_fraction: float = option(0.2, "the fine-tune's defaults, so the split matches it")
    test_fraction: float = 0.2
    calibration: Literal["none", "temperature", "isotonic", "platt"] = "none"
    overlap: float = option(0.0, "overlap of context-length crops inside longer windows, in [0, 1)")
    voting: Literal["soft", "majority"] = "soft"
    register: bool = option(False, "register the calibrated model as a new version of the same name")
    force: bool = option(False, "register even when calibration made validation ECE or Brier worse")

    def validate(self) -> None:
        super().validate()
        if not self.model:
            raise DataError("config key 'model' is required: a registered fine-tuned model (NAME@alias, NAME/3)")
        require_range("overlap", self.overlap, 0, 1, high_open=True)
        if self.register and self.calibration == "none":
            raise DataError("register=true needs a calibration method: an uncalibrated copy adds nothing")


COMPARE_MODES = ("probe", "finetune", "lora")


@dataclasses.dataclass
class CompareConfig(BaseConfig):
    """`compare`: several checkpoints, one dataset and split, one leaderboard."""

    SOURCE_KEYS = ("data",)
    FILE_KEYS = ("finetune_config", "split_manifest")

    checkpoints: list[str] = option(factory=list, help="names, aliases, URIs or globs (ttm_*_mae)")
    data: str = "synthetic:quality"
    n_subjects: int = 0
    windows_per_subject: int = 0
    data_dir: str = "data"
    modes: list[Literal["probe", "finetune", "lora"]] = option(
        factory=lambda: ["probe", "finetune"],
        help="probe: frozen backbone, linear head; finetune: staged unfreezing; lora: LoRA adapters in stage 2")
    metric: Literal["balanced_accuracy", "auroc", "f1"] = "balanced_accuracy"
    finetune_config: str = option("", "YAML of finetune keys shared by every row (epochs, lr, head, …)")
    split_manifest: str = option("", "CSV subject,split; empty: a subject split written once and used by every row")
    reference: list[Literal["features", "scratch"]] = option(
        factory=lambda: ["features", "scratch"],
        help="Reference rows on the same split: features (window features + scikit-learn) and scratch (the first "
             "checkpoint's architecture, random init); trained once, within the first row's run.")
    cv: str = option("", "k or loso: every row cross-validated on the same subject folds (pooled test metrics)")
    train_subjects: list[str] = option(factory=list, help="label efficiency: train every row (and reference) on these numbers of "
                                       "labelled training subjects (seeded nested subsets, e.g. 2,4,8,all), tested on the same "
                                       "test split; label_efficiency.png/.csv")
    seeds: int = option(1, "label efficiency: subsets (and training) repeated with seeds seed .. seed+seeds-1, pooled")

    def subject_counts(self) -> list[int]:
        """train_subjects as numbers (0 = all), in the order given."""
        counts = []
        for item in self.train_subjects:
            if item == "all":
                counts.append(0)
            elif item.isdigit() and int(item) >= 1:
                counts.append(int(item))
            else:
                raise ConfigError(f"config key 'train_subjects': {item!r} is not a positive number of subjects or all")
        return counts

    def validate(self) -> None:
        super().validate()
        self.subject_counts()
        require_range("seeds", self.seeds, 1)
        if self.train_subjects and self.cv:
            raise ConfigError("config keys 'train_subjects' and 'cv' exclude each other: label-efficiency curves "
                              "keep one test split")
        if not self.checkpoints:
            raise ConfigError("config key 'checkpoints' is empty: list registered names, URIs or patterns")
        if not self.modes:
            raise ConfigError(f"config key 'modes' is empty: choose from {', '.join(COMPARE_MODES)}")
        if self.cv and self.split_manifest:
            raise ConfigError("config keys 'cv' and 'split_manifest' exclude each other: cross-validation makes "
                              "its own subject folds")


@dataclasses.dataclass
class PromoteConfig(BaseConfig):
    """`promote`: evaluate a registered version against its policy and move the alias if it passes."""

    FILE_KEYS = ("policies",)

    model: str = option("", "registered model name")
    version: str = option("", "version number or alias; empty: the version holding @candidate")
    to: Literal["staging", "production"] = "staging"
    policy: str = option("", "policy name; empty: the one whose applies_to matches the model")
    policies: str = option("", "directory or file of policies; empty: ./registry_policies (else the project's)")
    dry_run: bool = False

    def validate(self) -> None:
        super().validate()
        if not self.model:
            raise ConfigError("config key 'model' is required: the registered model to promote")


@dataclasses.dataclass
class MainConfig(BaseConfig):
    """`main`: dataset -> pretrain -> finetune(checkpoint=auto) -> registered fine-tuned model."""

    SOURCE_KEYS = ("data", "pretrain_data")
    FILE_KEYS = ("pretrain_config", "finetune_config")

    data: str = option("synthetic:quality", "the fine-tuning dataset")
    pretrain_data: str = "synthetic:ppg-ecg"
    data_dir: str = "data"
    pretrain_config: str = option("", "YAML of pretrain keys (default: a small PPG+ECG TTM)")
    finetune_config: str = option("", "YAML of finetune keys (default: 5 head-only + up to 15 partial-unfreeze epochs)")
    reference: list[Literal["features", "scratch"]] = option(
        factory=lambda: ["features", "scratch"],
        help="reference models trained beside the fine-tune on the same split (features, scratch); [] for none")
    train_subjects: list[str] = option(
        factory=list, help="label efficiency after the fine-tune: the pretrained checkpoint fine-tuned (and the "
                           "references trained) on these numbers of labelled training subjects (e.g. 2,4,8,all), a "
                           "nested compare run; [] for none")
    seeds: int = option(1, "label efficiency: repeated subsets and training seeds, pooled")
