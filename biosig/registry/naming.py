"""Registered-model naming convention: each backbone spec formats and parses its own names
(biosig/backbones/*.py holds each grammar fragment); this module adds what is common to all of them.

    ttm_{channels}_c{context}_p{patch}_m{mask_pct}_mae[_mix]      masked-patch reconstruction
    ttm_{channels}_c{context}_p{patch}_h{horizon}_fcst[_mix]      forecasting
    mamba2_{modality}_d{d_model}_l{num_layers}_m{mask_pct}_{mae|bert}
    {plug-in arch}_…                                              see `biosig backbones`
    {any of the above}_finetuned                                  fine-tuned pyfunc models

Examples: ttm_ppg-ecg_c1024_p128_m40_mae, mamba2_eeg_d256_l2_m20_mae_finetuned.
"""

from __future__ import annotations

import dataclasses

from biosig import backbones
from biosig.errors import ConfigError

FINETUNED_SUFFIX = "_finetuned"


@dataclasses.dataclass(frozen=True)
class ModelName:
    """Parsed fields of a conventional name. `fields` holds the architecture-specific values."""

    arch: str  # a backbone spec's arch (ttm, mamba2, a plug-in)
    fields: dict
    finetuned: bool = False

    @property
    def pretrained(self) -> str:
        return format_name(self.arch, **self.fields)

    def __str__(self) -> str:
        return self.pretrained + (FINETUNED_SUFFIX if self.finetuned else "")


def format_name(arch: str, **fields) -> str:
    return backbones.get(arch).format_name(fields)


def parse_name(name: str) -> ModelName:
    """Parse a conventional name; ConfigError explains the grammar when it does not match."""
    base, finetuned = (name[: -len(FINETUNED_SUFFIX)], True) if name.endswith(FINETUNED_SUFFIX) else (name, False)
    specs = backbones.installed()
    for spec in specs.values():
        if base.startswith(f"{spec.arch}_") and (fields := spec.parse_name(base)) is not None:
            return ModelName(spec.arch, fields, finetuned)
    examples = " or ".join(spec.example for spec in specs.values() if spec.example)
    raise ConfigError(f"{name!r} does not follow the naming convention: expected e.g. {examples}, optionally "
                      f"ending in {FINETUNED_SUFFIX}")


def is_conventional(name: str) -> bool:
    try:
        parse_name(name)
    except ConfigError:
        return False
    return True
