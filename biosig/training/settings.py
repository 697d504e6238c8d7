"""What a fit is configured with, free of torch (command configs import it while `--help` stays fast):
the schedule's stages, the trainer's knobs, the classifier head, class-weight specs, and pretraining's knobs."""

from __future__ import annotations

import dataclasses

import numpy as np

from biosig.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Stage:
    number: int  # 1 head only (+ new channel slices), 2 head + last blocks (or LoRA), 3 everything
    epochs: int
    lr: float


@dataclasses.dataclass(frozen=True)
class LoopSettings:
    """What every training loop takes: batches, seed, AdamW with warm-up, clipping, precision, readers."""

    batch_size: int = 64
    seed: int = 0
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    grad_clip: float = 1.0
    amp: str = "auto"
    data_workers: int = 1
    stream_cache: str = "auto"  # auto | on | off: a stream's decoded row groups kept for later epochs


@dataclasses.dataclass(frozen=True)
class FitSettings(LoopSettings):
    """The fine-tuning loop's knobs. Commands build it from their config (`FinetuneConfig.fit_settings()`)."""

    unfreeze_last_n: int = 2
    adaptation: str = "unfreeze"  # or lora: stage 2 trains adapters on the frozen backbone
    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    class_weights: str = "auto"  # auto (balanced) | none | comma-separated weights per class
    selection_metric: str = "auroc"  # auroc | f1 | balanced_accuracy | loss
    aggregate: str = "none"  # participant aggregation of window probabilities (none | mean | median | vote)
    selection_level: str = "window"
    patience: int = 3
    collapse_threshold: float = 0.1


@dataclasses.dataclass(frozen=True, kw_only=True)
class PretrainSettings(LoopSettings):
    """Pretraining's knobs (`PretrainConfig.pretrain_settings()`): the data it reads and the loop."""

    channels: list[str]
    window_length: int  # samples per window the objective takes (the context, plus the horizon to forecast)
    patch_length: int
    context_fit: str = "crop_or_pad"
    val_fraction: float = 0.2
    epochs: int = 10
    lr: float = 1e-3
    checkpoint_every: int = 0  # a stream: also save last/ every N optimiser steps


def staged(stage1_epochs: int, stage2_epochs: int, stage3_epochs: int, lr: float) -> list[Stage]:
    """The default schedule: head, then head + last blocks at `lr`, then everything at lr/10."""
    return [Stage(1, stage1_epochs, lr), Stage(2, stage2_epochs, lr), Stage(3, stage3_epochs, lr / 10)]


@dataclasses.dataclass(frozen=True)
class HeadSettings:
    head: str = "linear"  # linear | mlp
    dropout: float = 0.1
    pooling: str = "meanmax"  # mean | meanmax | flatten


def parse_class_weights(spec: str) -> np.ndarray:
    """`class_weights` as comma-separated positive numbers, one per class."""
    try:
        weights = np.array([float(w) for w in spec.split(",")], dtype=np.float32)
    except ValueError:
        raise ConfigError(f"config key 'class_weights' must be auto, none or comma-separated numbers, got {spec!r}") \
            from None
    if (weights <= 0).any() or not np.isfinite(weights).all():
        raise ConfigError(f"config key 'class_weights' must be positive, got {spec!r}")
    return weights
