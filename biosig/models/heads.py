"""Classification heads and the backbone + head classifier.

Pooling keeps the channel axis: embeddings [B, C, P, d] are averaged over patches only and the
channels are concatenated, because common_channel TTM is channel-permutation-equivariant and channel
identity (PPG vs ACC_X) must therefore live in the head.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from biosig.errors import ConfigError

HeadKind = Literal["linear", "mlp"]
Pooling = Literal["mean", "meanmax", "flatten"]
POOLINGS = ("mean", "meanmax", "flatten")


def make_head(kind: str, in_features: int, n_classes: int, dropout: float = 0.1) -> nn.Module:
    if kind == "linear":
        return nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, n_classes))
    if kind == "mlp":
        hidden = max(1, in_features // 2)
        return nn.Sequential(nn.LayerNorm(in_features), nn.Dropout(dropout), nn.Linear(in_features, hidden),
                             nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))
    raise ConfigError(f"config key 'head' must be 'linear' or 'mlp', got {kind!r}")


def pool(embeddings: torch.Tensor, pooling: str) -> torch.Tensor:
    """[B, C, P, d] -> [B, features], channel axis kept. `meanmax` also keeps the strongest patch
    response, which localised artefacts (bursts, flat segments) need; `flatten` keeps patch positions."""
    if pooling == "mean":
        return embeddings.mean(dim=2).flatten(1)
    if pooling == "meanmax":
        return torch.cat([embeddings.mean(dim=2), embeddings.amax(dim=2)], dim=-1).flatten(1)
    if pooling == "flatten":
        return embeddings.flatten(1)
    raise ConfigError(f"config key 'pooling' must be one of {POOLINGS}, got {pooling!r}")


def pooled_features(pooling: str, channels: int, patches: int, d_model: int) -> int:
    per_channel = {"mean": d_model, "meanmax": 2 * d_model, "flatten": patches * d_model}[pooling]
    return channels * per_channel


class Classifier(nn.Module):
    """backbone [B, C, T] -> [B, C, P, d] -> pool over patches (channels kept) -> head -> logits."""

    def __init__(self, backbone: nn.Module, n_classes: int, head: str = "linear", dropout: float = 0.1,
                 pooling: str = "meanmax") -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ConfigError(f"config key 'pooling' must be one of {POOLINGS}, got {pooling!r}")
        self.backbone = backbone
        self.pooling = pooling
        features = pooled_features(pooling, backbone.embedding_rows, backbone.num_patches, backbone.d_model)
        self.head = make_head(head, features, n_classes, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(pool(self.backbone(x), self.pooling))
