"""Staged unfreezing with checks, so that a schedule can never silently freeze nothing.

Stage 1: head only (plus the new slices of channel-inflated tensors, via gradient masks).
Stage 2: head + the last `unfreeze_last_n` backbone blocks (found by module type, input -> output).
Stage 3: everything (the caller lowers the learning rate).
Frozen modules are put in eval() so that their dropout does not perturb a head-only stage.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from biosig.errors import ConfigError


@dataclasses.dataclass
class StageCounts:
    stage: int
    trainable: int  # parameters (entries) that receive updates
    frozen: int
    unfrozen_blocks: list[str]

    def describe(self) -> str:
        blocks = f", blocks {self.unfrozen_blocks}" if self.unfrozen_blocks else ""
        return f"stage {self.stage}: {self.trainable:,} trainable / {self.frozen:,} frozen parameters{blocks}"


class GradientMasks:
    """Zero the gradient of pretrained slices of inflated tensors while a mask is active."""

    def __init__(self, model: nn.Module, pretrained_masks: dict[str, torch.Tensor]) -> None:
        params = dict(model.named_parameters())
        self.params = {name: params[name] for name in pretrained_masks}
        self.trainable = {name: (~mask).to(params[name].dtype) for name, mask in pretrained_masks.items()}
        self.active: set[str] = set()
        for name, param in self.params.items():
            param.register_hook(lambda grad, name=name: grad * self.trainable[name] if name in self.active else grad)

    def masked_params(self) -> list[nn.Parameter]:
        return [self.params[name] for name in sorted(self.active)]

    def trainable_entries(self, name: str) -> int:
        return int(self.trainable[name].sum().item()) if name in self.active else self.params[name].numel()


def param_groups(model: nn.Module, masks: GradientMasks | None) -> list[dict]:
    """Trainable parameters as optimiser groups. Gradient-masked tensors get no weight decay: decoupled
    decay would otherwise shrink their frozen pretrained slices although their gradient is zero."""
    masked = {id(p) for p in masks.masked_params()} if masks else set()
    trainable = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in trainable if id(p) not in masked]}]
    if masked:
        groups.append({"params": [p for p in trainable if id(p) in masked], "weight_decay": 0.0})
    return groups


def check_unfreeze(unfreeze_last_n: int, n_blocks: int) -> None:
    if not 0 <= unfreeze_last_n <= n_blocks:
        raise ConfigError(f"config key 'unfreeze_last_n' is {unfreeze_last_n} but the backbone has {n_blocks} "
                          f"blocks: choose 0..{n_blocks}")


def apply_stage(model: nn.Module, stage: int, unfreeze_last_n: int, masks: GradientMasks | None = None) -> StageCounts:
    """Set requires_grad and gradient masks for `stage` on a Classifier (backbone + head)."""
    backbone_blocks = model.backbone.blocks()
    check_unfreeze(unfreeze_last_n, len(backbone_blocks))
    unfrozen = backbone_blocks[len(backbone_blocks) - unfreeze_last_n:] if stage == 2 and unfreeze_last_n else []
    if stage == 3:
        unfrozen_params = {id(p) for p in model.backbone.parameters()}
    else:
        unfrozen_params = {id(p) for _, block in unfrozen for p in block.parameters()}
    names = {id(p): n for n, p in model.named_parameters()}
    if masks is not None:
        masks.active = {n for n, p in masks.params.items() if id(p) not in unfrozen_params}
    for param in model.backbone.parameters():
        inflated = masks is not None and names[id(param)] in masks.active
        param.requires_grad_(id(param) in unfrozen_params or inflated)
    for param in model.head.parameters():
        param.requires_grad_(True)
    counts = count_stage(model, masks, stage, [n for n, _ in unfrozen])
    expected_frozen = stage != 3
    if expected_frozen and counts.frozen == 0 or counts.trainable == 0:
        raise RuntimeError(f"stage {stage} froze {counts.frozen} and trained {counts.trainable} parameters")
    return counts


def set_train_mode(model: nn.Module, stage: int, unfreeze_last_n: int) -> None:
    """model.train() with the frozen parts of the backbone in eval() (no dropout, fixed norms)."""
    model.train()
    if stage == 3:
        return
    model.backbone.eval()
    if stage == 2 and unfreeze_last_n:
        for _, block in model.backbone.blocks()[-unfreeze_last_n:]:
            block.train()


def count_stage(model: nn.Module, masks: GradientMasks | None, stage: int, blocks: list[str]) -> StageCounts:
    """Trainable and frozen parameter entries of `model` as `requires_grad` and the masks leave them."""
    trainable = frozen = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            frozen += param.numel()
            continue
        n = masks.trainable_entries(name) if masks is not None and name in masks.params else param.numel()
        trainable += n
        frozen += param.numel() - n
    return StageCounts(stage, trainable, frozen, blocks)
