"""IBM Tiny Time Mixers (granite-tsfm): the PPG+ECG backbone of the product brief.

Names: ttm_{channels}_c{context}_p{patch}_m{mask%}_mae[_mix]  (masked-patch reconstruction)
       ttm_{channels}_c{context}_p{patch}_h{horizon}_fcst[_mix] (forecasting the next `horizon` samples)
`channels` are lower-case channel names without underscores joined by '-'; `_mix` marks mix_channel mode.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal

from biosig.backbones.spec import BackboneSpec, mask_percent
from biosig.config import option
from biosig.data.naming import channel_token, channels_from_token
from biosig.errors import ConfigError
from biosig.models.shapes import check_patching

_NAME = re.compile(
    r"^ttm_(?P<channels>[a-z0-9]+(?:-[a-z0-9]+)*)_c(?P<context>\d+)_p(?P<patch>\d+)"
    r"_(?:m(?P<mask>\d{1,2})_(?P<mae>mae)|h(?P<horizon>\d+)_(?P<fcst>fcst))(?P<mix>_mix)?$"
)


@dataclasses.dataclass
class TTMOptions:
    """TTM's own keys (TSPulse, built from the same mixer, shares them); the pretrain config composes them."""

    expansion_factor: int = option(2, "width of each mixer MLP as a multiple of d_model")
    mode: Literal["common_channel", "mix_channel"] = option(
        "common_channel", "common_channel: no channel-dependent weights; mix_channel: channel mixers too (names end _mix)")


def ttm_name(*, channels: list[str], context_length: int, patch_length: int, objective: str,
             mask_ratio: float = 0.4, prediction_length: int = 0, mode: str = "common_channel") -> str:
    if objective == "mae":
        tail = f"m{mask_percent(mask_ratio)}_mae"
    elif objective == "fcst":
        tail = f"h{prediction_length}_fcst"
    else:
        raise ConfigError(f"TTM objective must be 'mae' or 'fcst', got {objective!r}")
    mix = "_mix" if mode == "mix_channel" else ""
    return f"ttm_{channel_token(channels)}_c{context_length}_p{patch_length}_{tail}{mix}"


def _parse(name: str) -> dict[str, Any] | None:
    if not (m := _NAME.match(name)):
        return None
    objective = "mae" if m["mae"] else "fcst"
    fields = {"channels": m["channels"].split("-"), "context_length": int(m["context"]),
              "patch_length": int(m["patch"]), "objective": objective,
              "mode": "mix_channel" if m["mix"] else "common_channel"}
    fields.update({"mask_ratio": int(m["mask"]) / 100} if objective == "mae"
                  else {"prediction_length": int(m["horizon"])})
    return fields


def _fields(config: Any) -> dict[str, Any]:
    return {"channels": config.channels, "context_length": config.context_length,
            "patch_length": config.patch_length, "objective": config.objective, "mask_ratio": config.mask_ratio,
            "prediction_length": config.prediction_length, "mode": config.mode}


def _command_args(f: dict[str, Any]) -> str:
    args = [f"--channels {','.join(channels_from_token(f['channels']))}", f"--context-length {f['context_length']}",
            f"--patch-length {f['patch_length']}", f"--objective {f['objective']}"]
    args.append(f"--mask-ratio {f['mask_ratio']}" if f["objective"] == "mae"
                else f"--prediction-length {f['prediction_length']}")
    if f["mode"] != "common_channel":
        args.append(f"--mode {f['mode']}")
    return " ".join(args)


def _check(config: Any) -> None:
    check_patching(config.context_length, config.patch_length)
    if config.masking_style != "mae":
        raise ConfigError(f"config key 'masking_style' {config.masking_style!r} needs arch=mamba2: TTM's "
                          "masked reconstruction fills masked patches in the input")


def _build(channels: list[str], config: dict[str, Any]):
    from biosig.models.ttm import TTMBackbone

    return TTMBackbone(channels, **config)


def _pretraining(backbone, config: Any):
    from biosig.models.pretraining import PretrainModel

    return PretrainModel(backbone, config.objective, config.mask_ratio, config.prediction_length)


SPEC = BackboneSpec(
    arch="ttm", summary="IBM Tiny Time Mixers (granite-tsfm), channel-independent MLP-Mixer; PPG+ECG default",
    keys=("context_length", "patch_length", "d_model", "num_layers", "dropout"), options=TTMOptions,
    build=_build, pretraining=_pretraining, name_fields=_fields, format_name=lambda f: ttm_name(**f),
    parse_name=_parse, command_args=_command_args, objectives=("mae", "fcst"), check=_check,
    example="ttm_ppg-ecg_c1024_p64_m40_mae",
    lora_targets=("fc1", "fc2"),  # the mixers' MLP layers
    # granite-tsfm's TinyTimeMixerForPrediction keeps the mixer under `backbone.`; biosig's wrapper under `model.`
    import_prefixes=(("backbone.", "model."), ("", "model.")),
)
