"""Pretraining models: a patch backbone with the head and loss of its self-supervised objective
(forward(x, generator) -> (loss, prediction/target variance ratio))."""

from __future__ import annotations

import torch
from torch import nn

from biosig.models.masking import (
    PatchReconstructionHead,
    apply_mask,
    masked_mse,
    patchify,
    prediction_variance_ratio,
    random_patch_mask,
)


class ForecastHead(nn.Module):
    """Per channel: flattened patch embeddings [B, C, P*d] -> the next `horizon` samples."""

    def __init__(self, num_patches: int, d_model: int, horizon: int) -> None:
        super().__init__()
        self.proj = nn.Linear(num_patches * d_model, horizon)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.proj(embeddings.flatten(2))


class PretrainModel(nn.Module):
    """A patch backbone plus its self-supervised objective: masked-patch reconstruction (`mae`) or
    forecasting the `prediction_length` samples after the context (`fcst`)."""

    def __init__(self, backbone: nn.Module, objective: str, mask_ratio: float, prediction_length: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.objective = objective
        self.mask_ratio = mask_ratio
        self.head = (PatchReconstructionHead(backbone.d_model, backbone.patch_length) if objective == "mae"
                     else ForecastHead(backbone.num_patches, backbone.d_model, prediction_length))

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, prediction/target variance ratio) for one batch of windows."""
        if self.objective == "fcst":
            context = self.backbone.context_length
            prediction, target = self.head(self.backbone(x[..., :context])).float(), x[..., context:].float()
            return nn.functional.mse_loss(prediction, target), prediction_variance_ratio(prediction, target)
        patch = self.backbone.patch_length
        mask = random_patch_mask((x.shape[0], x.shape[1], x.shape[2] // patch), self.mask_ratio,
                                 generator=generator).to(x.device)
        prediction, target = self.head(self.backbone(apply_mask(x, mask, patch))).float(), patchify(x, patch).float()
        return masked_mse(prediction, target, mask), prediction_variance_ratio(prediction[mask], target[mask])
