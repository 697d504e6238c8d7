"""The training commands' keys: optimiser and device keys they share (`LoopConfig`), `pretrain` (with the
built-in backbones' own keys composed from their specs' options dataclasses), `import-checkpoint`, `export`,
`finetune` and `tune`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from biosig import backbones
from biosig.backbones.mamba2 import Mamba2Options
from biosig.backbones.tspulse import TSPulseOptions
from biosig.config import BaseConfig, load_config, option, require_range
from biosig.data.adapt import ContextFit, Normalisation
from biosig.data.channels import check_channels
from biosig.data.sources import check_source_spec
from biosig.data.splits import read_split_table
from biosig.errors import ConfigError
from biosig.files import require_local_file
from biosig.registry.naming import is_conventional, parse_name
from biosig.training.settings import FitSettings, HeadSettings, PretrainSettings, Stage, parse_class_weights, staged


@dataclasses.dataclass
class LoopConfig(BaseConfig):
    """Optimiser and device keys shared by every training command (pretrain, finetune, tune)."""

    batch_size: int = option(64, "windows per optimiser step (per process under torchrun)")
    lr: float = option(1e-3, "AdamW peak learning rate")
    weight_decay: float = option(0.01, "AdamW weight decay")
    warmup_fraction: float = option(0.1, "share of the steps with a linear warm-up before the cosine decay")
    grad_clip: float = option(1.0, "gradient-norm clip; 0 disables it")
    device: str = option("auto", "auto (CUDA when present) | cpu | cuda | cuda:N")
    amp: Literal["auto", "off", "bf16"] = option("auto", "auto: bf16 autocast on CUDA, fp32 on CPU")
    stream_cache: Literal["auto", "on", "off"] = option(
        "auto", "a sharded dataset's decoded row groups kept on local disk ($BIOSIG_CACHE_DIR) so later epochs skip "
                "parquet decoding; auto: when training runs 2+ epochs and they fit in half the free space")
    data_workers: int = option(1, "a sharded dataset (a directory or s3:// prefix with manifest.json) is streamed by this many "
                               "reader processes per training process (0: read in the training process)")

    def validate(self) -> None:
        super().validate()
        require_range("batch_size", self.batch_size, 1)
        require_range("data_workers", self.data_workers, 0)
        require_range("lr", self.lr, 0, low_open=True)
        require_range("warmup_fraction", self.warmup_fraction, 0, 1)


#: more epochs than any run could finish: a typo (an extra digit run), refused before a run exists
MAX_EPOCHS = 100_000
#: Bundled labelled tasks a pretraining run probes by default, by the channels they hold.
PROBE_TASKS = {"synthetic:quality": {"PPG", "ECG", "ACC_X", "ACC_Y", "ACC_Z"},
               "synthetic:eeg": {"AF7", "AF8", "TP9", "TP10"}}


@dataclasses.dataclass
class PretrainConfig(LoopConfig, Mamba2Options, TSPulseOptions):
    """`pretrain`: self-supervised pretraining; the defaults are the PPG+ECG TTM of the product brief. The
    built-in backbones' own keys come from their specs' options dataclasses (TTMOptions, TSPulseOptions,
    Mamba2Options), composed here as bases; `--help` lists them last, by architecture."""

    SOURCE_KEYS = ("data",)

    data: str = option("synthetic:ppg-ecg", "source spec or .parquet/.npz path (see log_dataset)")
    n_subjects: int = option(0, "synthetic sizes; 0 keeps the source's default")
    windows_per_subject: int = 0
    data_dir: str = option("data", "where synthetic/npz sources are written as parquet")
    channels: list[str] = option(factory=lambda: ["PPG", "ECG"], help="channels the backbone reads, by name")
    arch: str = option("ttm", "backbone: ttm, mamba2, tspulse or an installed plug-in (`biosig backbones`); mamba2 "
                       "switches the defaults to its Muse EEG preset")
    context_length: int = option(1024, "samples per window the backbone reads")
    patch_length: int = option(64, "16 patches of 0.5 s at 125 Hz: measured better than 128 for quality (see docs)")
    d_model: int = option(64, "embedding width")
    num_layers: int = option(3, "mixer / state-space layers")
    dropout: float = 0.1
    objective: Literal["mae", "fcst"] = option("mae", "mae: masked reconstruction; fcst (ttm only): forecasting")
    mask_ratio: float = option(0.4, "share of patches (tokens) masked")
    masking_style: Literal["mae", "bert"] = option("mae", "mamba2: masked tokens removed (mae) or replaced (bert)")
    prediction_length: int = option(96, "fcst: samples forecast after the context")
    decoder_layers: int = option(1, "mamba2 and tspulse: the light reconstruction decoder's depth")
    backbone_options: str = option("", "a plug-in backbone's own keys: key=value,… (`biosig backbones` lists them); "
                                   "also accepted for the built-ins' keys")
    collapse_ratio: float = option(0.02, "warn when val prediction/target variance falls below this")
    context_fit: ContextFit = "crop_or_pad"
    epochs: int = 10
    val_fraction: float = 0.2
    register: bool = True
    resume: str = option("", "run id of an earlier pretrain run to continue from its last epoch")
    checkpoint_every: int = option(0, "streamed (sharded) dataset, one process: also save last/ every N optimiser steps, so that "
                                   "`resume` continues an interrupted epoch where it stopped (0: at epoch ends only)")
    probe: str = option("auto", "labelled source the frozen backbone is probed on during pretraining (logistic regression on "
                        "pooled embeddings, subject folds): auto = the bundled task of the channels (PPG/ECG/ACC: "
                        "synthetic:quality, Muse EEG: synthetic:eeg), a source spec or file, or none")
    probe_every: int = option(0, "probe every N epochs (0: about five points per run); the last epoch always")

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
        self._fold_backbone_options()  # before the checks, which then see the values used
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

    def _fold_backbone_options(self) -> None:
        """`backbone_options` (known keys of the arch, right types) setting a key this config has as a field
        (the compatibility spelling of a built-in's option) sets that field, so names and builds agree."""
        spec = self.spec
        if spec.options is None or not isinstance(self, spec.options):  # a plug-in's keys stay in backbone_options
            backbones.parse_options(self.backbone_options, spec)  # known keys, right types
            return
        for key, value in backbones.parse_options(self.backbone_options, spec).items():
            setattr(self, key, value)

    @property
    def spec(self) -> backbones.BackboneSpec:
        return backbones.get(self.arch)

    def pretrain_settings(self) -> PretrainSettings:
        keys = {f.name for f in dataclasses.fields(PretrainSettings)} - {"channels", "window_length"}
        return PretrainSettings(channels=list(self.channels), window_length=self.window_length,
                                **{key: getattr(self, key) for key in keys})

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

    path: str = option("", "a Hugging Face model folder (config.json + model.safetensors or pytorch_model.bin), "
                       "hf:ORG/NAME[@revision] from the local Hugging Face cache, or a weights file (.safetensors, or torch.save "
                       "loaded with weights_only)")
    fs: float = option(125.0, "sampling rate (Hz) of the windows the weights were trained on")
    use_ema: bool = option(False, "import the EMA copy a training checkpoint carries instead of its raw weights")
    frequency_token: int = option(0, "TTM with resolution prefix tuning (r2.1): the resolution token fed to the encoder "
                                  "(granite-tsfm's run from 1 = minutes to 9 = weeks; 0, out of vocabulary, suits sub-second "
                                  "biosignals)")

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

    model: str = option("", "NAME, NAME@alias, NAME/version or models:/… of a pretrained (ttm, tspulse) checkpoint")
    format: Literal["hf"] = option("hf", "hf: a Hugging Face folder (config.json, model.safetensors, README.md)")
    output: str = option("", "the folder to write (must not exist, or be empty)")

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

    data: str = option("synthetic:quality", "source spec or .parquet/.npz path")
    n_subjects: int = 0
    windows_per_subject: int = 0
    data_dir: str = "data"
    channels: list[str] | None = option(None, "default: every channel of the data, in its order")
    checkpoint: str = option("auto", "auto | NAME[@alias|/version] | models:/… | runs:/… | s3://… | path")
    pretrain_config: str = option("", "YAML of the pretrain run whose name `auto` derives (empty: its defaults)")
    arch: str = option("auto", "the checkpoint's backbone (ttm, mamba2, a plug-in); auto: the pretrain config's or any")
    context_fit: ContextFit = option("crop_or_pad", "fit windows to the checkpoint's context: crop_or_pad crops longer windows "
                                     "(centre) and pads shorter ones, so any imported context (512, 1024, 1536) takes the data "
                                     "as it is; resample changes the time scale")
    normalisation: Normalisation = option("auto", "global: per-channel z-score fitted on train (keeps absolute amplitude); "
                                          "window: each window scaled by its own typical amplitude (unit-free); auto: global "
                                          "unless subjects' amplitudes differ > 30x (units)")
    head: Literal["linear", "mlp"] = "linear"
    head_dropout: float = 0.1
    pooling: Literal["mean", "meanmax", "flatten"] = option("meanmax", "over patches; channels are always kept")
    stage1_epochs: int = 3
    stage2_epochs: int = 5
    stage3_epochs: int = 0
    unfreeze_last_n: int = 2
    adaptation: Literal["unfreeze", "lora"] = option("unfreeze", "stage 2: unfreeze the last unfreeze_last_n blocks, or train "
                                                     "LoRA adapters (peft) on the backbone's layers with everything else frozen; "
                                                     "adapters are merged into the weights before the model is saved")
    lora_rank: int = option(8, "adaptation=lora: rank r of each adapter")
    lora_alpha: float = option(16.0, "adaptation=lora: scale alpha (updates are scaled by alpha / r)")
    lora_dropout: float = option(0.05, "adaptation=lora: dropout on the adapter input")
    class_weights: str = option("auto", "auto (balanced) | none | comma-separated weights per class")
    selection_metric: Literal["auroc", "f1", "balanced_accuracy", "loss"] = "auroc"
    aggregate: Literal["none", "mean", "median", "vote"] = option("none", "Window probabilities aggregated per participant "
                                                                  "(subject): metrics at both levels are logged as "
                                                                  "{split}_window_* and {split}_participant_*; plain {split}_* "
                                                                  "are those of `selection_level`.")
    selection_level: Literal["window", "participant"] = "window"
    patience: int = 3
    collapse_threshold: float = 0.1
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    split_manifest: str = option("", "CSV subject,split (train/val/test); overrides the fractions")
    train_subjects: int = option(0, "train on this many of the training subjects (a seeded subset, nested across sizes, classes "
                                 "alternating; val and test unchanged): label-efficiency curves; 0: all")
    task: str = option("", "recorded on the registered version; default: the dataset's label name")
    reference: list[Literal["features", "scratch"]] = option(factory=list, help="Reference models trained and tested on the same "
                                                             "split, each a nested run (tag biosig.reference): features (window "
                                                             "features + scikit-learn) and scratch (this architecture, random "
                                                             "init).")
    cv: str = option("", "cross-validation: empty (one split), k >= 2 (subject folds) or loso (one subject per fold)")
    bootstrap: int = option(1000, "subject-level bootstrap resamples for test_*_ci_low/high (0: no interval)")
    register: bool = True
    force_candidate: bool = option(False, "take @candidate even when the version holding it scored better or was tested on "
                                   "another split (otherwise a new version takes it only when at least as good on the same test "
                                   "split)")
    promote: Literal["", "staging", "production"] = option("", "evaluate the registry policy for this target at the end")
    policies: str = option("", "policy directory or file for `promote` (default: registry_policies/)")

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

    n_trials: int = option(20, "trials this call runs (shared among n_jobs workers)")
    lr_min: float = 1e-5
    lr_max: float = 3e-3
    search_space: str = option("", "YAML of extra dimensions (head, head_dropout, stage1_epochs, weight_decay, …)")
    pruner: Literal["successive_halving", "median", "none"] = option("successive_halving", "see benchmarks/pruning.py")
    storage: str = option("", "empty: optuna.journal next to the tracking DB; or postgresql://… / sqlite:///…")
    study: str = option("", "empty: a new study; an existing name resumes or joins it")
    n_jobs: int = option(1, "worker processes (this one included) on the study")
    register_best: bool = option(False, "refit the best params through the normal fine-tune path and register")
    parent_run_id: str = option("", "internal: workers log their trials under the parent's run")
    worker: int = option(0, "internal: worker index (seeds its sampler)")

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
