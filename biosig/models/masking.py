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


def prediction_variance_ratio(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """var(prediction) / var(target) over the scored values: near 0 means the model predicts the mean
    (the known failure of masked reconstruction), near 1 means it reproduces the signal's spread."""
    prediction, target = prediction.detach().float(), target.detach().float()
    return prediction.var() / target.var().clamp_min(1e-12)


class MaskedTokenModel(nn.Module):
    """Masked-token reconstruction for token backbones (`embed`, `encode`, `token_values`,
    `token_positions`, e.g. Mamba-2). Loss on masked tokens only.

    `mae`: masked tokens are removed from the encoder input; a light decoder (`decoder_layers` layers
    from `backbone.make_layer()`) sees the encoded visible tokens plus a learned mask token at every masked
    slot, each with the slot's position embedding. `bert`: masked tokens' content is replaced by a
    learned mask token (positions kept) and the whole sequence is encoded; a linear head reconstructs.
    """

    def __init__(self, backbone: nn.Module, masking_style: str, mask_ratio: float, decoder_layers: int = 1) -> None:
        super().__init__()
        if masking_style not in ("mae", "bert"):
            raise ConfigError(f"config key 'masking_style' must be 'mae' or 'bert', got {masking_style!r}")
        if not 0 < mask_ratio < 1:
            raise ConfigError(f"config key 'mask_ratio' must be in (0, 1), got {mask_ratio}")
        d = backbone.d_model
        self.backbone, self.style, self.mask_ratio = backbone, masking_style, mask_ratio
        self.mask_token = nn.Parameter(torch.randn(d) * 0.02)
        if masking_style == "mae":
            self.decoder_positions = nn.Parameter(torch.randn(backbone.num_tokens, d) * 0.02)
            self.decoder = nn.Sequential(*(backbone.make_layer() for _ in range(decoder_layers)),
                                         nn.RMSNorm(d, eps=1e-5))
        self.head = nn.Linear(d, backbone.token_width)

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked MSE, prediction/target variance ratio) for one batch of windows [B, C, T]."""
        target = self.backbone.token_values(x)  # [B, N, W]
        b, n, _ = target.shape
        mask = random_patch_mask((b, 1, n), self.mask_ratio, generator=generator).to(x.device)[:, 0]  # [B, N]
        content = self.backbone.patch_embed(target)
        positions = self.backbone.token_positions()
        if self.style == "bert":
            content = torch.where(mask[..., None], self.mask_token.to(content.dtype), content)
            prediction = self.head(self.backbone.encode(content + positions))
        else:
            n_visible = int((~mask[0]).sum())
            visible = torch.argsort(mask.to(torch.int8), dim=1, stable=True)[:, :n_visible]  # ascending slots
            index = visible[..., None].expand(-1, -1, content.shape[-1])
            encoded = self.backbone.encode((content + positions).gather(1, index))
            slots = self.mask_token.to(encoded.dtype).expand(b, n, -1).scatter(1, index, encoded)
            prediction = self.head(self.decoder(slots + self.decoder_positions))
        prediction, target = prediction[mask].float(), target[mask].float()
        return nn.functional.mse_loss(prediction, target), prediction_variance_ratio(prediction, target)
