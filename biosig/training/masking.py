"""Masked-patch reconstruction: the self-supervised objective for pretraining backbones that emit
per-patch embeddings [B, C, P, d]. The loss is computed on masked patches only."""

from __future__ import annotations

import torch
from torch import nn

from biosig.errors import ConfigError


def patchify(x: torch.Tensor, patch_length: int) -> torch.Tensor:
    """[B, C, T] -> [B, C, T // patch_length, patch_length] (T must be a multiple)."""
    b, c, t = x.shape
    if t % patch_length:
        raise ValueError(f"window length {t} is not a multiple of patch_length {patch_length}")
    return x.reshape(b, c, t // patch_length, patch_length)


def random_patch_mask(shape: tuple[int, int, int], mask_ratio: float, generator: torch.Generator | None = None,
                      device: torch.device | str = "cpu") -> torch.Tensor:
    """Boolean [B, C, P], True = masked: exactly round(ratio * P) patches per (window, channel),
    at least one masked and one visible."""
    if not 0 < mask_ratio < 1:
        raise ConfigError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    b, c, p = shape
    n_masked = min(max(1, round(mask_ratio * p)), p - 1)
    scores = torch.rand(b, c, p, generator=generator, device=device)
    ranks = scores.argsort(dim=-1).argsort(dim=-1)
    return ranks < n_masked


def apply_mask(x: torch.Tensor, mask: torch.Tensor, patch_length: int, fill: float = 0.0) -> torch.Tensor:
    """Replace masked patches of [B, C, T] with `fill` (0 = the mean after normalisation)."""
    sample_mask = mask.repeat_interleave(patch_length, dim=-1)
    return x.masked_fill(sample_mask, fill)


def masked_mse(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked patches only; prediction/target [B, C, P, L], mask [B, C, P]."""
    per_patch = (prediction - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1)


class PatchReconstructionHead(nn.Module):
    """Per-patch linear decoder: embeddings [B, C, P, d] -> reconstructed patches [B, C, P, L]."""

    def __init__(self, d_model: int, patch_length: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, patch_length)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.proj(embeddings)
