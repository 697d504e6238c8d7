"""Channel mapping/inflation by name and staged freezing with gradient masks."""

import pytest
import torch

from biosig.errors import ConfigError, DataError
from biosig.models.freezing import GradientMasks, apply_stage, param_groups, set_train_mode
from biosig.models.heads import Classifier
from biosig.models.inflation import map_channels
from biosig.models.ttm import TTMBackbone
from biosig.training.loop import optimizer_and_schedule

TINY = {"context_length": 64, "patch_length": 16, "d_model": 8, "num_layers": 2, "dropout": 0.0}
OLD = ["PPG", "ECG"]
NEW = ["ACC_X", "ACC_Y", "ACC_Z", "PPG", "ECG"]


def _pair(mode):
    torch.manual_seed(0)
    old = TTMBackbone(OLD, **TINY, mode=mode).eval()
    new = TTMBackbone(NEW, **TINY, mode=mode).eval()
    mapping = map_channels(old.state_dict(), new.state_dict(), OLD, NEW)
    new.load_state_dict(mapping.state_dict, strict=True)
    return old, new, mapping


def test_common_channel_has_no_channel_dependent_tensors():
    old, new, mapping = _pair("common_channel")
    assert mapping.pretrained_masks == {}
    assert "no channel-dependent tensors" in mapping.describe() and mapping.positions == {"PPG": 3, "ECG": 4}
    x = torch.randn(3, 2, 64)
    wide = torch.cat([torch.randn(3, 3, 64), x], dim=1)  # any ACC content: channels are independent
    torch.testing.assert_close(new(wide)[:, 3:], old(x), rtol=0, atol=1e-6)


def test_mix_channel_inflation_preserves_pretrained_embeddings():
    old, new, mapping = _pair("mix_channel")
    assert len(mapping.inflated) == 12  # 2 layers x (gate w, b; fc1 w, b; fc2 w, b)
    x = torch.randn(4, 2, 64)
    wide = torch.cat([torch.zeros(4, 3, 64), x], dim=1)  # new channels zero
    with torch.no_grad():
        before, after = old(x), new(wide)[:, 3:]
    assert (before - after).abs().max().item() < 1e-5
    for name, mask in mapping.pretrained_masks.items():
        assert mask.sum() == old.state_dict()[name].numel()  # exactly the pretrained entries are marked
        torch.testing.assert_close(mapping.state_dict[name][mask].sort().values,
                                   old.state_dict()[name].flatten().sort().values)


def test_missing_pretrained_channel_is_an_error():
    old = TTMBackbone(OLD, **TINY)
    other = TTMBackbone(["ACC_X", "PPG"], **TINY)
    with pytest.raises(DataError, match=r"channels \['ECG'\] are missing from the fine-tuning data channels"):
        map_channels(old.state_dict(), other.state_dict(), OLD, ["ACC_X", "PPG"])


def test_gradient_masks_hold_pretrained_slices_while_new_slices_and_head_train():
    _, backbone, mapping = _pair("mix_channel")
    model = Classifier(backbone, 2, pooling="mean")
    masks = GradientMasks(model, {f"backbone.{k}": v for k, v in mapping.pretrained_masks.items()})
    counts = apply_stage(model, 1, 1, masks)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer, scheduler = optimizer_and_schedule(param_groups(model, masks), 1e-2, 0.1, 3, 0.0)
    set_train_mode(model, 1, 1)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 5, 64)), torch.randint(0, 2, (8,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
    after = model.state_dict()
    for name, mask in masks.trainable.items():
        mask = mask.bool()
        assert torch.equal(after[name][~mask], before[name][~mask]), f"pretrained slice of {name} moved"
    moved = [n for n, m in masks.trainable.items() if not torch.equal(after[n][m.bool()], before[n][m.bool()])]
    assert moved, "no new slice trained"
    assert not torch.equal(after["head.1.weight"], before["head.1.weight"])
    untouched = [n for n in after if n.startswith("backbone.") and n not in masks.params]
    assert all(torch.equal(after[n], before[n]) for n in untouched)
    assert counts.trainable == sum(p.numel() for p in model.head.parameters()) + sum(
        int(m.sum()) for m in masks.trainable.values())


def test_stages_unfreeze_the_last_blocks_by_type_and_count_parameters():
    model = Classifier(TTMBackbone(OLD, **TINY), 2, head="mlp")
    head = sum(p.numel() for p in model.head.parameters())
    total = sum(p.numel() for p in model.parameters())
    s1 = apply_stage(model, 1, 1)
    assert s1.trainable == head and s1.frozen == total - head
    s2 = apply_stage(model, 2, 1)
    last_block = model.backbone.blocks()[-1]
    assert s2.unfrozen_blocks == [last_block[0]]
    assert s2.trainable == head + sum(p.numel() for p in last_block[1].parameters())
    assert all(p.requires_grad for p in last_block[1].parameters())
    assert not any(p.requires_grad for p in model.backbone.blocks()[0][1].parameters())
    set_train_mode(model, 2, 1)
    assert last_block[1].training and not model.backbone.blocks()[0][1].training and model.head.training
    s3 = apply_stage(model, 3, 1)
    assert s3.trainable == total and s3.frozen == 0
    with pytest.raises(ConfigError, match="'unfreeze_last_n' is 3 but the backbone has 2 blocks"):
        apply_stage(model, 2, 3)
