"""Registered-model naming convention: the one grammar that both formats and parses names.

    ttm_{channels}_c{context}_p{patch}_m{mask_pct}_mae[_mix]      masked-patch reconstruction
    ttm_{channels}_c{context}_p{patch}_h{horizon}_fcst[_mix]      forecasting
    mamba2_{modality}_d{d_model}_l{num_layers}_m{mask_pct}_{mae|bert}
    {any of the above}_finetuned                                  fine-tuned pyfunc models

`channels` are lower-case channel names without underscores joined by '-' (ppg-ecg, accx-accy-accz-ppg-ecg);
`_mix` marks TTM in mix_channel mode (common_channel is the default and carries no suffix).
Examples: ttm_ppg-ecg_c1024_p128_m40_mae, mamba2_eeg_d256_l2_m20_mae_finetuned.
"""

from __future__ import annotations

import dataclasses
import re

from biosig.data.naming import channel_token
from biosig.errors import ConfigError

FINETUNED_SUFFIX = "_finetuned"

_TTM = re.compile(
    r"^ttm_(?P<channels>[a-z0-9]+(?:-[a-z0-9]+)*)_c(?P<context>\d+)_p(?P<patch>\d+)"
    r"_(?:m(?P<mask>\d{1,2})_(?P<mae>mae)|h(?P<horizon>\d+)_(?P<fcst>fcst))(?P<mix>_mix)?$"
)
_MAMBA2 = re.compile(
    r"^mamba2_(?P<modality>[a-z0-9]+)_d(?P<d_model>\d+)_l(?P<layers>\d+)_m(?P<mask>\d{1,2})_(?P<style>mae|bert)$"
)


@dataclasses.dataclass(frozen=True)
class ModelName:
    """Parsed fields of a conventional name. `fields` holds the architecture-specific values."""

    arch: str  # "ttm" | "mamba2"
    fields: dict
    finetuned: bool = False

    @property
    def pretrained(self) -> str:
        return format_name(self.arch, **self.fields)

    def __str__(self) -> str:
        return self.pretrained + (FINETUNED_SUFFIX if self.finetuned else "")


def mask_percent(mask_ratio: float) -> int:
    pct = int(round(mask_ratio * 100))
    if not 0 < pct < 100:
        raise ConfigError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    return pct


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


def mamba2_name(*, modality: str, d_model: int, num_layers: int, mask_ratio: float, masking_style: str) -> str:
    if masking_style not in ("mae", "bert"):
        raise ConfigError(f"masking_style must be 'mae' or 'bert', got {masking_style!r}")
    return f"mamba2_{modality.lower()}_d{d_model}_l{num_layers}_m{mask_percent(mask_ratio)}_{masking_style}"


def format_name(arch: str, **fields) -> str:
    if arch == "ttm":
        return ttm_name(**fields)
    if arch == "mamba2":
        return mamba2_name(**fields)
    raise ConfigError(f"unknown architecture {arch!r}: expected 'ttm' or 'mamba2'")


def parse_name(name: str) -> ModelName:
    """Parse a conventional name; ConfigError explains the grammar when it does not match."""
    base, finetuned = (name[: -len(FINETUNED_SUFFIX)], True) if name.endswith(FINETUNED_SUFFIX) else (name, False)
    if m := _TTM.match(base):
        objective = "mae" if m["mae"] else "fcst"
        fields = {
            "channels": m["channels"].split("-"), "context_length": int(m["context"]),
            "patch_length": int(m["patch"]), "objective": objective,
            "mode": "mix_channel" if m["mix"] else "common_channel",
        }
        fields.update({"mask_ratio": int(m["mask"]) / 100} if objective == "mae"
                      else {"prediction_length": int(m["horizon"])})
        return ModelName("ttm", fields, finetuned)
    if m := _MAMBA2.match(base):
        fields = {"modality": m["modality"], "d_model": int(m["d_model"]), "num_layers": int(m["layers"]),
                  "mask_ratio": int(m["mask"]) / 100, "masking_style": m["style"]}
        return ModelName("mamba2", fields, finetuned)
    raise ConfigError(
        f"{name!r} does not follow the naming convention: expected e.g. ttm_ppg-ecg_c1024_p128_m40_mae or "
        f"mamba2_eeg_d256_l2_m20_mae, optionally ending in {FINETUNED_SUFFIX}"
    )


def is_conventional(name: str) -> bool:
    try:
        parse_name(name)
    except ConfigError:
        return False
    return True
