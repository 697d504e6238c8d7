"""IBM TSPulse (granite-tsfm): TTM's sibling built for classification and anomaly detection, pretrained
by its own masked reconstruction (hybrid patch + point masks, loss on the masked points).

Names: tspulse_{channels}_c{context}_p{patch}_m{mask%}_mae[_mix], e.g. tspulse_ppg-ecg_c1024_p64_m40_mae.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from biosig.backbones.spec import BackboneSpec, mask_percent
from biosig.backbones.ttm import TTMOptions
from biosig.config import option
from biosig.data.naming import channel_token, channels_from_token
from biosig.errors import ConfigError
from biosig.models.shapes import check_patching

_NAME = re.compile(r"^tspulse_(?P<channels>[a-z0-9]+(?:-[a-z0-9]+)*)_c(?P<context>\d+)_p(?P<patch>\d+)"
                   r"_m(?P<mask>\d{1,2})_mae(?P<mix>_mix)?$")


@dataclasses.dataclass
class TSPulseOptions(TTMOptions):
    """TSPulse's own keys: TTM's mixer keys and its frequency-domain branch."""

    fuse_fft: bool = option(False, "add TSPulse's frequency-domain branch (FFT patches beside the time patches; ~2x compute)")


def tspulse_name(*, channels: list[str], context_length: int, patch_length: int, mask_ratio: float,
                 mode: str = "common_channel") -> str:
    mix = "_mix" if mode == "mix_channel" else ""
    return f"tspulse_{channel_token(channels)}_c{context_length}_p{patch_length}_m{mask_percent(mask_ratio)}_mae{mix}"


def _parse(name: str) -> dict[str, Any] | None:
    if not (m := _NAME.match(name)):
        return None
    return {"channels": m["channels"].split("-"), "context_length": int(m["context"]), "patch_length": int(m["patch"]),
            "mask_ratio": int(m["mask"]) / 100, "mode": "mix_channel" if m["mix"] else "common_channel"}


def _fields(config: Any) -> dict[str, Any]:
    return {"channels": config.channels, "context_length": config.context_length, "patch_length": config.patch_length,
            "mask_ratio": config.mask_ratio, "mode": config.mode}


def _command_args(f: dict[str, Any]) -> str:
    return (f"--channels {','.join(channels_from_token(f['channels']))} --context-length {f['context_length']} "
            f"--patch-length {f['patch_length']} --mask-ratio {f['mask_ratio']}"
            + (f" --mode {f['mode']}" if f["mode"] != "common_channel" else ""))


def _check(config: Any) -> None:
    check_patching(config.context_length, config.patch_length)
    if config.objective != "mae" or config.masking_style != "mae":
        raise ConfigError("arch=tspulse pretrains by its own masked reconstruction: objective=mae, masking_style=mae")


def _build(channels: list[str], config: dict[str, Any]):
    from biosig.models.tspulse import TSPulseBackbone

    return TSPulseBackbone(channels, **config)


def _pretraining(backbone, config: Any):
    from biosig.models.tspulse import TSPulsePretraining

    return TSPulsePretraining(backbone, decoder_layers=config.decoder_layers)


SPEC = BackboneSpec(
    arch="tspulse", summary="IBM TSPulse (granite-tsfm), TTM's sibling for classification; masked reconstruction",
    keys=("context_length", "patch_length", "d_model", "num_layers", "dropout", "mask_ratio"),
    options=TSPulseOptions,
    build=_build, pretraining=_pretraining, name_fields=_fields, format_name=lambda f: tspulse_name(**f),
    parse_name=_parse, command_args=_command_args, objectives=("mae",), check=_check,
    example="tspulse_ppg-ecg_c1024_p64_m40_mae",
    lora_targets=("fc1", "fc2"),  # the mixers' MLP layers
    # granite-tsfm's TSPulseFor* classes keep the model under `backbone.`; biosig's wrapper under `model.`
    import_prefixes=(("backbone.", "model."), ("", "model.")),
)
