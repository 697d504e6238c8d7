import pytest
import torch

from biosig.data.synthetic import synthetic_cardio
from biosig.errors import ConfigError
from biosig.models.masking import PatchReconstructionHead, apply_mask, masked_mse, patchify, random_patch_mask
from biosig.models.ttm import TTMBackbone


def test_mask_ratio_is_exact_per_window_and_channel():
    g = torch.Generator().manual_seed(0)
    mask = random_patch_mask((4, 3, 10), 0.4, g)
    assert mask.shape == (4, 3, 10) and (mask.sum(-1) == 4).all()
    assert (random_patch_mask((2, 1, 4), 0.01, g).sum(-1) == 1).all()  # at least one masked
    assert (random_patch_mask((2, 1, 4), 0.99, g).sum(-1) == 3).all()  # at least one visible
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match=r"mask_ratio must be in \(0, 1\)"):
            random_patch_mask((1, 1, 4), bad)


def test_apply_mask_blanks_exactly_the_masked_patches():
    x = torch.arange(2 * 8, dtype=torch.float32).reshape(1, 2, 8) + 1
    mask = torch.tensor([[[True, False], [False, True]]])
    out = apply_mask(x, mask, 4)
    assert (out[0, 0, :4] == 0).all() and torch.equal(out[0, 0, 4:], x[0, 0, 4:])
    assert (out[0, 1, 4:] == 0).all() and torch.equal(out[0, 1, :4], x[0, 1, :4])
    assert torch.equal(patchify(x, 4)[0, 1, 1], x[0, 1, 4:])


def test_loss_ignores_visible_patches():
    g = torch.Generator().manual_seed(1)
    target = torch.randn(2, 2, 6, 5, generator=g)
    mask = random_patch_mask((2, 2, 6), 0.5, g)
    prediction = torch.randn(2, 2, 6, 5, generator=g)
    base = masked_mse(prediction, target, mask)
    changed = prediction.clone()
    changed[~mask] += 100.0
    assert torch.equal(masked_mse(changed, target, mask), base)
    perfect = torch.where(mask[..., None], target, prediction)
    assert masked_mse(perfect, target, mask) == 0


def test_tiny_ttm_learns_to_reconstruct_masked_ppg_ecg_patches():
    torch.manual_seed(0)
    ws = synthetic_cardio(n_subjects=4, windows_per_subject=16, window_s=64 / 125, seed=0)
    x = torch.from_numpy(ws.signals)
    x = (x - x.mean(dim=(0, 2), keepdim=True)) / x.std(dim=(0, 2), keepdim=True)
    backbone = TTMBackbone(ws.channels, context_length=64, patch_length=8, d_model=16, num_layers=2, dropout=0.0)
    head = PatchReconstructionHead(16, 8)
    optimiser = torch.optim.AdamW([*backbone.parameters(), *head.parameters()], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    eval_mask = random_patch_mask((x.shape[0], 2, 8), 0.4, g)

    def eval_loss() -> float:
        with torch.no_grad():
            return masked_mse(head(backbone(apply_mask(x, eval_mask, 8))), patchify(x, 8), eval_mask).item()

    before = eval_loss()
    for _ in range(60):
        mask = random_patch_mask((x.shape[0], 2, 8), 0.4, g)
        loss = masked_mse(head(backbone(apply_mask(x, mask, 8))), patchify(x, 8), mask)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    after = eval_loss()
    assert after < 0.7 * before, (before, after)
