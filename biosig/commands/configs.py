"""Every command's config keys, importable without torch, MLflow or scikit-learn.

One dataclass per command (`biosig CMD --key`, `mlflow run . -e CMD -P key=value` and `key: value` in a
YAML file are the same keys); each field's comment is its help line. Commands import their config from
here, and `biosig CMD --help` reads only this module, so it answers in a fraction of a second. What a
config checks needs no framework either: shape rules come from biosig.models.shapes, names from
biosig.registry.naming.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, Literal

from biosig import backbones
from biosig.config import BaseConfig, load_config, require_range
from biosig.data.adapt import ContextFit, Normalisation
from biosig.data.channels import check_channels
from biosig.data.naming import check_kind
from biosig.data.sources import SourceOptions, check_source_spec
from biosig.data.splits import read_split_table
from biosig.errors import ConfigError, DataError
from biosig.files import require_local_file
from biosig.models.shapes import MAMBA2_DEFAULTS
from biosig.registry.naming import is_conventional, parse_name
from biosig.training.settings import FitSettings, HeadSettings, Stage, parse_class_weights, staged


@dataclasses.dataclass
class LoopConfig(BaseConfig):
    """Optimiser and device keys shared by every training command (pretrain, finetune, tune)."""

    batch_size: int = 64  # windows per optimiser step (per process under torchrun)
    lr: float = 1e-3  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW weight decay
    warmup_fraction: float = 0.1  # share of the steps with a linear warm-up before the cosine decay
    grad_clip: float = 1.0  # gradient-norm clip; 0 disables it
    device: str = "auto"  # auto (CUDA when present) | cpu | cuda | cuda:N
    amp: Literal["auto", "off", "bf16"] = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    # a sharded dataset (a directory or s3:// prefix with manifest.json) is streamed by this many reader
    # processes per training process (0: read in the training process)
    data_workers: int = 1

    def validate(self) -> None:
        super().validate()
        require_range("batch_size", self.batch_size, 1)
        require_range("data_workers", self.data_workers, 0)
        require_range("lr", self.lr, 0, low_open=True)
        require_range("warmup_fraction", self.warmup_fraction, 0, 1)


#: more epochs than any run could finish: a typo (an extra digit run), refused before a run exists
MAX_EPOCHS = 100_000
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
    # explicit .parquet path (default {output_dir}/{dataset name}_{digest}.parquet), or a directory or
    # s3:// prefix ending in '/': a sharded dataset (parquet shards + manifest.json) built in parallel
    output: str = ""
    n_subjects: int | None = None  # synthetic sizes (default: the source's own)
    windows_per_subject: int | None = None
    window_s: float | None = None  # seconds per window (default: the source's own)
    good_fraction: float = 0.24
    channels: list[str] | None = None  # npz files without a channels array
    fs: float | None = None  # npz files without fs; Muse CSV sampling rate (default 256)
    labels: str = ""  # Muse: participants CSV with Participant,Remission (default DIR/participants.csv)
    subs_per_parent: int = 4  # Muse: consecutive sub-windows per parent window
    preprocess: str = ""  # butppg:/vitaldb: sources: preprocessing YAML (resampling, filters, gates)
    missing_acc: Literal["exclude", "zero"] = "exclude"  # BUT PPG records without ACC
    ppg_colour: int = 0  # BUT PPG: which of the 3 PPG colour channels
    context: str = "primary"  # MLflow dataset input context
    workers: int = 0  # sharded output: processes building groups of records at once (0: one per CPU)
    # sharded output across machines: build slice i of n (0-based i/n, e.g. a Slurm array index), then
    # `biosig dataset finalize PREFIX` once every slice is done
    shard: str = ""
    shard_rows: int = 32768  # sharded output: windows per shard at most (row groups of 2048)
    records_per_shard: int = 0  # sharded output: records per build group (0: 512 for BUT PPG, 4 for VitalDB)

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

    prefix: str = ""  # the output directory or s3:// prefix the shard=i/n parts were built into
    context: str = "primary"  # MLflow dataset input context

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

    data: str = "synthetic:quality"  # source spec or .parquet path
    n_subjects: int = 0
    windows_per_subject: int = 0
    data_dir: str = "data"
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    cv: int = 0  # 0: one split; k >= 2: k folds around a fixed test split
    use_recommended: bool = True  # honour a recommended_split column when the parquet has one
    output_dir: str = "data/splits"

    def validate(self) -> None:
        super().validate()
        require_range("val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True)
        require_range("test_fraction", self.test_fraction, 0, 1, high_open=True)
        if self.cv < 0 or self.cv == 1:
            raise ConfigError(f"config key 'cv' must be 0 (one split) or at least 2 folds, got {self.cv}")


#: Bundled labelled tasks a pretraining run probes by default, by the channels they hold.
PROBE_TASKS = {"synthetic:quality": {"PPG", "ECG", "ACC_X", "ACC_Y", "ACC_Z"},
               "synthetic:eeg": {"AF7", "AF8", "TP9", "TP10"}}


@dataclasses.dataclass
class PretrainConfig(LoopConfig):
    """`pretrain`: self-supervised pretraining; the defaults are the PPG+ECG TTM of the product brief."""

    SOURCE_KEYS = ("data",)

    data: str = "synthetic:ppg-ecg"  # source spec or .parquet/.npz path (see log_dataset)
    n_subjects: int = 0  # synthetic sizes; 0 keeps the source's default
    windows_per_subject: int = 0
    data_dir: str = "data"  # where synthetic/npz sources are written as parquet
    channels: list[str] = dataclasses.field(default_factory=lambda: ["PPG", "ECG"])
    # backbone: ttm, mamba2 or an installed plug-in (`biosig backbones`); mamba2 switches the defaults to
    # its Muse EEG preset
    arch: str = "ttm"
    context_length: int = 1024
    patch_length: int = 64  # 16 patches of 0.5 s at 125 Hz: measured better than 128 for quality (see docs)
    d_model: int = 64
    num_layers: int = 3
    expansion_factor: int = 2  # ttm
    dropout: float = 0.1
    mode: Literal["common_channel", "mix_channel"] = "common_channel"  # ttm
    objective: Literal["mae", "fcst"] = "mae"  # mae: masked reconstruction; fcst (ttm only): forecasting
    mask_ratio: float = 0.4
    masking_style: Literal["mae", "bert"] = "mae"  # mamba2: masked tokens removed (mae) or replaced (bert)
    prediction_length: int = 96
    d_state: int = MAMBA2_DEFAULTS["d_state"]  # mamba2
    expand: int = MAMBA2_DEFAULTS["expand"]  # mamba2
    headdim: int = MAMBA2_DEFAULTS["headdim"]  # mamba2
    chunk_size: int = MAMBA2_DEFAULTS["chunk_size"]  # mamba2
    tokenization: Literal["per_channel", "joint"] = "per_channel"  # mamba2
    bidirectional: bool = True  # mamba2: add a reverse-direction mixer per layer
    decoder_layers: int = 1  # mamba2 mae: the light decoder's depth
    backbone_options: str = ""  # a plug-in backbone's own keys: key=value,… (`biosig backbones` lists them)
    collapse_ratio: float = 0.02  # warn when val prediction/target variance falls below this
    context_fit: ContextFit = "crop_or_pad"
    epochs: int = 10
    val_fraction: float = 0.2
    register: bool = True
    resume: str = ""  # run id of an earlier pretrain run to continue from its last epoch
    # streamed (sharded) dataset, one process: also save last/ every N optimiser steps, so that `resume`
    # continues an interrupted epoch where it stopped (0: at epoch ends only)
    checkpoint_every: int = 0
    # labelled source the frozen backbone is probed on during pretraining (logistic regression on pooled
    # embeddings, subject folds): auto = the bundled task of the channels (PPG/ECG/ACC: synthetic:quality,
    # Muse EEG: synthetic:eeg), a source spec or file, or none
    probe: str = "auto"
    probe_every: int = 0  # probe every N epochs (0: about five points per run); the last epoch always

    def probe_source(self) -> str:
        """The probe's source spec, or '' for none (auto: the bundled task whose channels hold these)."""
        if self.probe != "auto":
            return "" if self.probe == "none" else self.probe
        for source, channels in PROBE_TASKS.items():
            if set(self.channels) <= channels:
                return source
        return ""

    @classmethod
    def preset(cls, values: dict[str, Any]) -> dict[str, Any]:
        spec = backbones.installed().get(str(values.get("arch", "ttm")))
        return dict(spec.pretrain_preset) if spec else {}

    def validate(self) -> None:
        super().validate()
        check_channels(self.channels, "config key 'channels'")
        require_range("mask_ratio", self.mask_ratio, 0, 1, low_open=True, high_open=True)
        require_range("checkpoint_every", self.checkpoint_every, 0)
        require_range("probe_every", self.probe_every, 0)
        if self.probe not in ("auto", "none"):
            check_source_spec("probe", self.probe)
        require_range("val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True)
        require_range("dropout", self.dropout, 0, 1, high_open=True)
        require_range("collapse_ratio", self.collapse_ratio, 0, 1)
        for key in ("epochs", "d_model", "num_layers", "expansion_factor", "prediction_length", "decoder_layers"):
            require_range(key, getattr(self, key), 1)
        require_range("epochs", self.epochs, 1, MAX_EPOCHS)
        spec = self.spec
        spec.check(self)  # its own words first
        if self.objective not in spec.objectives:
            raise ConfigError(f"config key 'objective' {self.objective!r}: arch={self.arch} pretrains with "
                              f"{', '.join(spec.objectives)}")
        self.backbone_config()  # backbone_options: known keys, right types

    @property
    def spec(self) -> backbones.BackboneSpec:
        return backbones.get(self.arch)

    def model_name(self) -> str:
        return self.spec.name(self)

    def backbone_config(self) -> dict[str, Any]:
        return self.spec.build_config(self)

    @property
    def window_length(self) -> int:
        return self.context_length + (self.prediction_length if self.objective == "fcst" else 0)


@dataclasses.dataclass
class ImportCheckpointConfig(PretrainConfig):
    """`import_checkpoint`: a backbone trained outside biosig, registered under its conventional name. A Hugging
    Face folder (or hf:ORG/NAME) of a granite-tsfm model brings its own arch, sizes, options and objective from
    config.json; a bare weights file takes them from the backbone keys (arch, context_length, patch_length,
    d_model, …; the training keys of pretrain are not used)."""

    SOURCE_KEYS = ()

    # a Hugging Face model folder (config.json + model.safetensors or pytorch_model.bin), hf:ORG/NAME[@revision]
    # from the local Hugging Face cache, or a weights file (.safetensors, or torch.save loaded with weights_only)
    path: str = ""
    fs: float = 125.0  # sampling rate (Hz) of the windows the weights were trained on
    use_ema: bool = False  # import the EMA copy a training checkpoint carries instead of its raw weights
    # TTM with resolution prefix tuning (r2.1): the resolution token fed to the encoder (granite-tsfm's run
    # from 1 = minutes to 9 = weeks; 0, out of vocabulary, suits sub-second biosignals)
    frequency_token: int = 0

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("config key 'path' is required: a Hugging Face model folder, hf:ORG/NAME or a "
                              "weights file")
        if not self.path.startswith("hf:"):
            require_local_file("path", self.path)
        require_range("frequency_token", self.frequency_token, 0)
        super().validate()


@dataclasses.dataclass
class ExportConfig(BaseConfig):
    """`export`: a registered pretrained checkpoint as a folder granite-tsfm's `from_pretrained` loads."""

    model: str = ""  # NAME, NAME@alias, NAME/version or models:/… of a pretrained (ttm, tspulse) checkpoint
    format: Literal["hf"] = "hf"  # hf: a Hugging Face folder (config.json, model.safetensors, README.md)
    output: str = ""  # the folder to write (must not exist, or be empty)

    def validate(self) -> None:
        super().validate()
        if not self.model:
            raise ConfigError("config key 'model' is required: the registered checkpoint to export (NAME[@alias])")
        if not self.output:
            raise ConfigError("config key 'output' is required: the folder to write")
        out = Path(self.output)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(f"config key 'output': {self.output} exists and is not an empty folder; biosig never "
                              "overwrites an export")


@dataclasses.dataclass
class FinetuneConfig(LoopConfig):
    """`finetune`: staged fine-tuning of a registered pretrained checkpoint for classification."""

    SOURCE_KEYS = ("data",)
    FILE_KEYS = ("split_manifest", "pretrain_config", "policies")

    data: str = "synthetic:quality"  # source spec or .parquet/.npz path
    n_subjects: int = 0
    windows_per_subject: int = 0
    data_dir: str = "data"
    channels: list[str] | None = None  # default: every channel of the data, in its order
    checkpoint: str = "auto"  # auto | NAME[@alias|/version] | models:/… | runs:/… | s3://… | path
    pretrain_config: str = ""  # YAML of the pretrain run whose name `auto` derives (empty: its defaults)
    arch: str = "auto"  # the checkpoint's backbone (ttm, mamba2, a plug-in); auto: the pretrain config's or any
    # fit windows to the checkpoint's context: crop_or_pad crops longer windows (centre) and pads shorter ones, so
    # any imported context (512, 1024, 1536) takes the data as it is; resample changes the time scale
    context_fit: ContextFit = "crop_or_pad"
    # global: per-channel z-score fitted on train (keeps absolute amplitude); window: each window scaled by
    # its own typical amplitude (unit-free); auto: global unless subjects' amplitudes differ > 30x (units)
    normalisation: Normalisation = "auto"
    head: Literal["linear", "mlp"] = "linear"
    head_dropout: float = 0.1
    pooling: Literal["mean", "meanmax", "flatten"] = "meanmax"  # over patches; channels are always kept
    stage1_epochs: int = 3
    stage2_epochs: int = 5
    stage3_epochs: int = 0
    unfreeze_last_n: int = 2
    # stage 2: unfreeze the last unfreeze_last_n blocks, or train LoRA adapters (peft) on the backbone's
    # layers with everything else frozen; adapters are merged into the weights before the model is saved
    adaptation: Literal["unfreeze", "lora"] = "unfreeze"
    lora_rank: int = 8  # adaptation=lora: rank r of each adapter
    lora_alpha: float = 16.0  # adaptation=lora: scale alpha (updates are scaled by alpha / r)
    lora_dropout: float = 0.05  # adaptation=lora: dropout on the adapter input
    class_weights: str = "auto"  # auto (balanced) | none | comma-separated weights per class
    selection_metric: Literal["auroc", "f1", "balanced_accuracy", "loss"] = "auroc"
    # Window probabilities aggregated per participant (subject): metrics at both levels are logged as
    # {split}_window_* and {split}_participant_*; plain {split}_* are those of `selection_level`.
    aggregate: Literal["none", "mean", "median", "vote"] = "none"
    selection_level: Literal["window", "participant"] = "window"
    patience: int = 3
    collapse_threshold: float = 0.1
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_manifest: str = ""  # CSV subject,split (train/val/test); overrides the fractions
    # train on this many of the training subjects (a seeded subset, nested across sizes, classes alternating;
    # val and test unchanged): label-efficiency curves; 0: all
    train_subjects: int = 0
    task: str = ""  # recorded on the registered version; default: the dataset's label name
    # Reference models trained and tested on the same split, each a nested run (tag biosig.reference):
    # features (window features + scikit-learn) and scratch (this architecture, random init).
    reference: list[Literal["features", "scratch"]] = dataclasses.field(default_factory=list)
    cv: str = ""  # cross-validation: empty (one split), k >= 2 (subject folds) or loso (one subject per fold)
    bootstrap: int = 1000  # subject-level bootstrap resamples for test_*_ci_low/high (0: no interval)
    register: bool = True
    # take @candidate even when the version holding it scored better or was tested on another split
    # (otherwise a new version takes it only when at least as good on the same test split)
    force_candidate: bool = False
    promote: Literal["", "staging", "production"] = ""  # evaluate the registry policy for this target at the end
    policies: str = ""  # policy directory or file for `promote` (default: registry_policies/)

    @classmethod
    def preset(cls, values: dict[str, Any]) -> dict[str, Any]:
        spec = backbones.installed().get(_requested_arch(values) or "")
        return dict(spec.finetune_preset) if spec else {}

    def validate(self) -> None:
        super().validate()
        if self.selection_level == "participant" and self.aggregate == "none":
            raise ConfigError("config key 'selection_level' participant needs aggregate=mean, median or vote")
        if self.promote and not self.register:
            raise ConfigError("config key 'promote' needs register=true: only registered versions are promoted")
        if self.arch != "auto":
            backbones.get(self.arch)
        if self.channels is not None:
            if not self.channels:
                raise ConfigError("config key 'channels' is empty: name the channels (e.g. PPG,ECG) or leave it out")
            check_channels(self.channels, "config key 'channels'")
        for key in ("stage1_epochs", "stage2_epochs", "stage3_epochs", "unfreeze_last_n"):
            require_range(key, getattr(self, key), 0)
        for key in ("stage1_epochs", "stage2_epochs", "stage3_epochs"):
            require_range(key, getattr(self, key), 0, MAX_EPOCHS)
        require_range("lora_rank", self.lora_rank, 1)
        require_range("lora_alpha", self.lora_alpha, 0, low_open=True)
        require_range("lora_dropout", self.lora_dropout, 0, 1, high_open=True)
        if self.adaptation == "lora" and not self.stage2_epochs:
            raise ConfigError("config key 'adaptation' lora trains its adapters in stage 2: set stage2_epochs > 0")
        if self.stage1_epochs + self.stage2_epochs + self.stage3_epochs == 0:
            raise ConfigError("stage1_epochs, stage2_epochs and stage3_epochs are all 0: nothing to train")
        require_range("patience", self.patience, 1)
        require_range("collapse_threshold", self.collapse_threshold, 0, 1)
        require_range("head_dropout", self.head_dropout, 0, 1, high_open=True)
        require_range("val_fraction", self.val_fraction, 0, 1, low_open=True, high_open=True)
        require_range("test_fraction", self.test_fraction, 0, 1, low_open=True, high_open=True)
        if self.class_weights not in ("auto", "none"):
            parse_class_weights(self.class_weights)
        require_range("bootstrap", self.bootstrap, 0)
        if len(set(self.reference)) != len(self.reference):
            raise ConfigError(f"config key 'reference' lists a reference twice: {self.reference}")
        if self.cv and self.cv != "loso" and not (self.cv.isdigit() and int(self.cv) >= 2):
            raise ConfigError(f"config key 'cv' must be empty, an integer >= 2 (subject folds) or loso, "
                              f"got {self.cv!r}")
        if self.split_manifest:
            read_split_table(self.split_manifest)  # its columns and values, before any run exists
        if self.cv and self.split_manifest:
            raise ConfigError("config keys 'cv' and 'split_manifest' exclude each other: cross-validation makes "
                              "its own subject folds")

    def fit_settings(self) -> FitSettings:
        """The trainer's knobs from this config."""
        return FitSettings(**{f.name: getattr(self, f.name) for f in dataclasses.fields(FitSettings)})

    def schedule(self) -> list[Stage]:
        return staged(self.stage1_epochs, self.stage2_epochs, self.stage3_epochs, self.lr)

    def head_settings(self) -> HeadSettings:
        return HeadSettings(self.head, self.head_dropout, self.pooling)

    def auto_name(self) -> str:
        return load_config(PretrainConfig, self.pretrain_config or None).model_name()

    def expected_arch(self) -> str | None:
        """The architecture the checkpoint must have: `arch`, else the pretrain config's for
        checkpoint=auto, else any."""
        if self.arch != "auto":
            return self.arch
        if self.checkpoint == "auto":
            return load_config(PretrainConfig, self.pretrain_config or None).arch
        return None


def _requested_arch(values: dict[str, Any]) -> str | None:
    """The architecture named by `arch`, the pretrain config file or a conventional checkpoint name."""
    if values.get("arch") not in (None, "auto"):
        return values["arch"]
    checkpoint = str(values.get("checkpoint", "auto"))
    if checkpoint == "auto":
        require_local_file("pretrain_config", str(values.get("pretrain_config") or ""))
        return load_config(PretrainConfig, values.get("pretrain_config") or None).arch
    name = checkpoint.removeprefix("models:/").split("@")[0].split("/")[0]
    return parse_name(name).arch if is_conventional(name) else None


#: Optuna storage URL from the environment (e.g. postgresql://user:PASSWORD@host/db), so that a password
#: need not appear in a config file or `-P`; the `storage` key wins when set.
STORAGE_ENV = "BIOSIG_OPTUNA_STORAGE"


@dataclasses.dataclass
class TuneConfig(FinetuneConfig):
    """`tune`: every finetune key is the base of each trial; these keys shape the search."""

    FILE_KEYS = (*FinetuneConfig.FILE_KEYS, "search_space")

    n_trials: int = 20  # trials this call runs (shared among n_jobs workers)
    lr_min: float = 1e-5
    lr_max: float = 3e-3
    search_space: str = ""  # YAML of extra dimensions (head, head_dropout, stage1_epochs, weight_decay, …)
    pruner: Literal["successive_halving", "median", "none"] = "successive_halving"  # see benchmarks/pruning.py
    storage: str = ""  # empty: optuna.journal next to the tracking DB; or postgresql://… / sqlite:///…
    study: str = ""  # empty: a new study; an existing name resumes or joins it
    n_jobs: int = 1  # worker processes (this one included) on the study
    register_best: bool = False  # refit the best params through the normal fine-tune path and register
    parent_run_id: str = ""  # internal: workers log their trials under the parent's run
    worker: int = 0  # internal: worker index (seeds its sampler)

    def validate(self) -> None:
        super().validate()
        if self.n_trials < 1:
            raise ConfigError(f"config key 'n_trials' must be >= 1, got {self.n_trials}")
        if self.n_jobs < 1:
            raise ConfigError(f"config key 'n_jobs' must be >= 1, got {self.n_jobs}")
        if self.cv:
            raise ConfigError("config key 'cv' does not apply to tune: trials search on one split (cross-validate "
                              "the chosen settings with `biosig finetune --cv K`); 'reference' applies to the refit")
        if self.storage and "://" not in self.storage:  # a journal file: its folder must be one
            folder = next((p for p in Path(self.storage).absolute().parents if p.exists()), None)
            if folder is not None and not folder.is_dir():
                raise ConfigError(f"config key 'storage': {folder} is a file, so the journal {self.storage} "
                                  "cannot be created under it")
        if not 0 < self.lr_min < self.lr_max:
            raise ConfigError(f"learning-rate range [lr_min, lr_max] = [{self.lr_min}, {self.lr_max}] is empty or "
                              "inverted: need 0 < lr_min < lr_max")

    @property
    def direction(self) -> str:
        return "minimize" if self.selection_metric == "loss" else "maximize"


@dataclasses.dataclass
class EvaluateConfig(BaseConfig):
    """`evaluate`: window- and subject-level metrics of a registered model, optional calibration."""

    SOURCE_KEYS = ("data",)

    model: str = ""  # NAME@alias, NAME/3, models:/… (bare NAME: @candidate)
    data: str = ""  # source spec or .parquet; empty: the dataset the model was fine-tuned on
    n_subjects: int = 0
    windows_per_subject: int = 0
    data_dir: str = "data"
    val_fraction: float = 0.2  # the fine-tune's defaults, so the split matches it
    test_fraction: float = 0.2
    calibration: Literal["none", "temperature", "isotonic", "platt"] = "none"
    overlap: float = 0.0  # overlap of context-length crops inside longer windows, in [0, 1)
    voting: Literal["soft", "majority"] = "soft"
    register: bool = False  # register the calibrated model as a new version of the same name
    force: bool = False  # register even when calibration made validation ECE or Brier worse

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

    checkpoints: list[str] = dataclasses.field(default_factory=list)  # names, aliases, URIs or globs (ttm_*_mae)
    data: str = "synthetic:quality"
    n_subjects: int = 0
    windows_per_subject: int = 0
    data_dir: str = "data"
    # probe: frozen backbone, linear head; finetune: staged unfreezing; lora: LoRA adapters in stage 2
    modes: list[Literal["probe", "finetune", "lora"]] = dataclasses.field(default_factory=lambda: ["probe", "finetune"])
    metric: Literal["balanced_accuracy", "auroc", "f1"] = "balanced_accuracy"
    finetune_config: str = ""  # YAML of finetune keys shared by every row (epochs, lr, head, …)
    split_manifest: str = ""  # CSV subject,split; empty: a subject split written once and used by every row
    # Reference rows on the same split: features (window features + scikit-learn) and scratch (the first
    # checkpoint's architecture, random init); trained once, within the first row's run.
    reference: list[Literal["features", "scratch"]] = dataclasses.field(default_factory=lambda: ["features", "scratch"])
    cv: str = ""  # k or loso: every row cross-validated on the same subject folds (pooled test metrics)
    # label efficiency: train every row (and reference) on these numbers of labelled training subjects
    # (seeded nested subsets, e.g. 2,4,8,all), tested on the same test split; label_efficiency.png/.csv
    train_subjects: list[str] = dataclasses.field(default_factory=list)
    seeds: int = 1  # label efficiency: subsets (and training) repeated with seeds seed .. seed+seeds-1, pooled

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

    model: str = ""  # registered model name
    version: str = ""  # version number or alias; empty: the version holding @candidate
    to: Literal["staging", "production"] = "staging"
    policy: str = ""  # policy name; empty: the one whose applies_to matches the model
    policies: str = ""  # directory or file of policies; empty: ./registry_policies (else the project's)
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

    data: str = "synthetic:quality"  # the fine-tuning dataset
    pretrain_data: str = "synthetic:ppg-ecg"
    data_dir: str = "data"
    pretrain_config: str = ""  # YAML of pretrain keys (default: a small PPG+ECG TTM)
    finetune_config: str = ""  # YAML of finetune keys (default: 5 head-only + up to 15 partial-unfreeze epochs)
    # reference models trained beside the fine-tune on the same split (features, scratch); [] for none
    reference: list[Literal["features", "scratch"]] = dataclasses.field(default_factory=lambda: ["features", "scratch"])
    # label efficiency after the fine-tune: the pretrained checkpoint fine-tuned (and the references trained)
    # on these numbers of labelled training subjects (e.g. 2,4,8,all), a nested compare run; [] for none
    train_subjects: list[str] = dataclasses.field(default_factory=list)
    seeds: int = 1  # label efficiency: repeated subsets and training seeds, pooled
