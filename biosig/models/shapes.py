"""What each backbone can be built with, checked without importing torch: configs validate against these
rules before any run starts, and `biosig CMD --help` lists their defaults in a fraction of a second."""

from __future__ import annotations

from typing import Any

from biosig.errors import ConfigError


def check_patching(context_length: int, patch_length: int) -> None:
    if patch_length <= 0 or context_length % patch_length:
        raise ConfigError(
            f"patch_length {patch_length} must divide context_length {context_length} "
            f"(e.g. {', '.join(str(p) for p in (64, 128, 256) if context_length % p == 0) or 'a divisor'})"
        )
    if context_length // patch_length < 2:
        raise ConfigError(f"config key 'context_length': {context_length} holds fewer than 2 patches of "
                          f"{patch_length} (patch_length)")


TOKENIZATIONS = ("per_channel", "joint")

#: Backbone config keys and their defaults (EEG: 8 s at 256 Hz, patch 16 -> 128 patches per channel).
MAMBA2_DEFAULTS: dict[str, Any] = {
    "context_length": 2048,
    "patch_length": 16,
    "d_model": 256,
    "num_layers": 2,
    "d_state": 64,
    "d_conv": 4,
    "expand": 2,
    "headdim": 64,
    "ngroups": 1,
    "chunk_size": 64,
    "tokenization": "per_channel",
    "bidirectional": True,
    "dropout": 0.0,
}


def check_mamba2_config(config: dict[str, Any]) -> None:
    """ConfigError naming the key for shapes Mamba-2 cannot build."""
    unknown = set(config) - set(MAMBA2_DEFAULTS)
    if unknown:
        raise ConfigError(f"unknown Mamba-2 config keys {sorted(unknown)}; known: {sorted(MAMBA2_DEFAULTS)}")
    c = {**MAMBA2_DEFAULTS, **config}
    for key in ("context_length", "patch_length", "d_model", "num_layers", "d_state", "d_conv", "expand", "headdim",
                "ngroups", "chunk_size"):
        if not isinstance(c[key], int) or c[key] < 1:
            raise ConfigError(f"config key '{key}' must be a positive integer, got {c[key]!r}")
    if c["tokenization"] not in TOKENIZATIONS:
        raise ConfigError(f"config key 'tokenization' must be one of {TOKENIZATIONS}, got {c['tokenization']!r}")
    if c["context_length"] < c["patch_length"]:
        raise ConfigError(f"context_length {c['context_length']} is shorter than one patch ({c['patch_length']} "
                          "samples)")
    if c["context_length"] % c["patch_length"]:
        raise ConfigError(f"patch_length {c['patch_length']} must divide context_length {c['context_length']}")
    d_inner = c["expand"] * c["d_model"]
    if d_inner % c["headdim"]:
        raise ConfigError(f"config key 'headdim' ({c['headdim']}) must divide expand x d_model ({d_inner})")
    if (d_inner // c["headdim"]) % c["ngroups"]:
        raise ConfigError(f"config key 'ngroups' ({c['ngroups']}) must divide the number of heads "
                          f"({d_inner // c['headdim']})")
