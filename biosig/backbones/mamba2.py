"""Mamba-2 on Muse EEG (AF7, AF8, TP9, TP10): patch tokens through selective state-space layers
(mamba-ssm's kernel on CUDA, a pure-PyTorch scan elsewhere), pretrained by masked-token reconstruction.

Names: mamba2_{modality}_d{d_model}_l{num_layers}_m{mask%}_{mae|bert}, e.g. mamba2_eeg_d256_l2_m20_mae.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

from biosig.backbones.spec import BackboneSpec, mask_percent
from biosig.config import option
from biosig.data.channels import MUSE_CHANNELS, infer_modality
from biosig.errors import ConfigError
from biosig.models.shapes import MAMBA2_DEFAULTS, check_mamba2_config

_NAME = re.compile(
    r"^mamba2_(?P<modality>[a-z0-9]+)_d(?P<d_model>\d+)_l(?P<layers>\d+)_m(?P<mask>\d{1,2})_(?P<style>mae|bert)$")
KEYS = ("context_length", "patch_length", "d_model", "num_layers", "dropout")


@dataclasses.dataclass
class Mamba2Options:
    """Mamba-2's own keys; the pretrain config composes them (defaults: models.shapes.MAMBA2_DEFAULTS)."""

    d_state: int = option(MAMBA2_DEFAULTS["d_state"], "SSM state size")
    expand: int = option(MAMBA2_DEFAULTS["expand"], "inner width of each mixer as a multiple of d_model")
    headdim: int = option(MAMBA2_DEFAULTS["headdim"], "channels per SSM head (expand * d_model must divide by it)")
    chunk_size: int = option(MAMBA2_DEFAULTS["chunk_size"], "tokens per chunk of the chunked SSD scan")
    tokenization: Literal["per_channel", "joint"] = option(
        MAMBA2_DEFAULTS["tokenization"], "per_channel: a token sequence per channel; joint: one token per patch of all channels")
    bidirectional: bool = option(MAMBA2_DEFAULTS["bidirectional"], "add a reverse-direction mixer per layer")


def mamba2_name(*, modality: str, d_model: int, num_layers: int, mask_ratio: float, masking_style: str) -> str:
    if masking_style not in ("mae", "bert"):
        raise ConfigError(f"masking_style must be 'mae' or 'bert', got {masking_style!r}")
    return f"mamba2_{modality.lower()}_d{d_model}_l{num_layers}_m{mask_percent(mask_ratio)}_{masking_style}"


def _parse(name: str) -> dict[str, Any] | None:
    if not (m := _NAME.match(name)):
        return None
    return {"modality": m["modality"], "d_model": int(m["d_model"]), "num_layers": int(m["layers"]),
            "mask_ratio": int(m["mask"]) / 100, "masking_style": m["style"]}


def _fields(config: Any) -> dict[str, Any]:
    return {"modality": infer_modality(config.channels), "d_model": config.d_model, "num_layers": config.num_layers,
            "mask_ratio": config.mask_ratio, "masking_style": config.masking_style}


def _command_args(f: dict[str, Any]) -> str:
    return (f"--d-model {f['d_model']} --num-layers {f['num_layers']} --mask-ratio {f['mask_ratio']} "
            f"--masking-style {f['masking_style']}")


def _check(config: Any) -> None:
    check_mamba2_config(SPEC.build_config(config))
    if config.objective != "mae":
        raise ConfigError(f"config key 'objective' {config.objective!r} is TTM-only: arch=mamba2 pretrains by "
                          "masked-token reconstruction (objective=mae, masking_style mae or bert)")


def _build(channels: list[str], config: dict[str, Any]):
    from biosig.models.mamba2 import Mamba2Backbone

    return Mamba2Backbone(channels, **config)


def _pretraining(backbone, config: Any):
    from biosig.models.masking import MaskedTokenModel

    return MaskedTokenModel(backbone, config.masking_style, config.mask_ratio, config.decoder_layers)


SPEC = BackboneSpec(
    arch="mamba2", summary="Mamba-2 selective state-space layers over patch tokens; Muse EEG remission",
    keys=KEYS, options=Mamba2Options, build=_build, pretraining=_pretraining, name_fields=_fields,
    format_name=lambda f: mamba2_name(**f),
    parse_name=_parse, command_args=_command_args, objectives=("mae",), check=_check,
    # the Muse EEG model of the product brief, unless set explicitly
    pretrain_preset={"data": "synthetic:eeg", "channels": MUSE_CHANNELS, "context_length": 2048, "patch_length": 16,
                     "d_model": 256, "num_layers": 2, "mask_ratio": 0.2, "dropout": 0.0, "batch_size": 32,
                     "epochs": 3},
    # remission is a participant-level label
    finetune_preset={"data": "synthetic:eeg", "selection_metric": "f1", "aggregate": "mean", "batch_size": 32},
    example="mamba2_eeg_d256_l2_m20_mae",
    lora_targets=("in_proj", "out_proj"),  # each Mamba-2 mixer's input and output projections
)
