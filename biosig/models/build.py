"""Build a backbone from its architecture name and config (the `backbone` entry of biosig.json)."""

from __future__ import annotations

from typing import Any

from torch import nn

from biosig.errors import ConfigError

ARCHITECTURES = ("ttm", "mamba2")


def build_backbone(arch: str, channels: list[str], config: dict[str, Any]) -> nn.Module:
    if arch == "ttm":
        from biosig.models.ttm import TTMBackbone

        return TTMBackbone(channels, **config)
    if arch == "mamba2":
        from biosig.models.mamba2 import Mamba2Backbone

        return Mamba2Backbone(channels, **config)
    raise ConfigError(f"no backbone for architecture {arch!r} in this biosig; available: {', '.join(ARCHITECTURES)}")


def build_classifier(meta: dict[str, Any]) -> nn.Module:
    """The Classifier described by a fine-tuned checkpoint's biosig.json (weights not loaded)."""
    from biosig.models.heads import Classifier

    backbone = build_backbone(meta["backbone"]["arch"], meta["backbone"]["channels"], meta["backbone"]["config"])
    head = meta["head"]
    return Classifier(backbone, len(meta["class_names"]), head=head["kind"], dropout=head["dropout"],
                      pooling=head["pooling"])
