"""TTM backbone built from config (no hub), blocks by module type, checkpoint round trip."""

import pytest
import torch

from biosig.errors import ConfigError, DataError
from biosig.models.checkpoint import load_weights, read_meta, save_checkpoint
from biosig.models.ttm import TTMBackbone

TINY = {"context_length": 64, "patch_length": 16, "d_model": 8, "num_layers": 2, "dropout": 0.0}


def test_forward_shape_and_blocks_in_order():
    torch.manual_seed(0)
    backbone = TTMBackbone(["PPG", "ECG"], **TINY)
    out = backbone(torch.randn(3, 2, 64))
    assert out.shape == (3, 2, 4, 8)  # [B, C, patches, d]
    names = [name for name, _ in backbone.blocks()]
    assert len(names) == 2 and names == sorted(names)
    assert all(type(m).__name__ == "TinyTimeMixerLayer" for _, m in backbone.blocks())
    with pytest.raises(ValueError, match=r"TTM expects \[B, 2, 64\], got \[3, 2, 50\]"):
        backbone(torch.randn(3, 2, 50))


def test_rebuilding_with_another_patch_length_works():
    TTMBackbone(["PPG"], **TINY)
    assert TTMBackbone(["PPG"], **{**TINY, "patch_length": 8})(torch.randn(1, 1, 64)).shape == (1, 1, 8, 8)


def test_bad_configs_are_named():
    with pytest.raises(ConfigError, match="patch_length 48 must divide context_length 64"):
        TTMBackbone(["PPG"], **{**TINY, "patch_length": 48})
    with pytest.raises(ConfigError, match=r"unknown TTM config keys \['layers'\]"):
        TTMBackbone(["PPG"], layers=2)
    with pytest.raises(ConfigError, match="mode must be common_channel or mix_channel"):
        TTMBackbone(["PPG"], **{**TINY, "mode": "mixed"})


def test_checkpoint_round_trip_is_strict(tmp_path):
    torch.manual_seed(1)
    a = TTMBackbone(["PPG", "ECG"], **TINY).eval()
    path = save_checkpoint(tmp_path / "ckpt", a.state_dict(), {"backbone": a.describe(), "fs": 125.0})
    meta = read_meta(path)
    assert meta["backbone"]["channels"] == ["PPG", "ECG"] and meta["format_version"] == 1
    b = TTMBackbone(meta["backbone"]["channels"], **meta["backbone"]["config"]).eval()
    load_weights(path, b)
    x = torch.randn(2, 2, 64)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    wrong = TTMBackbone(["PPG", "ECG"], **{**TINY, "d_model": 16})
    with pytest.raises(DataError, match="does not fit the model built from its config"):
        load_weights(path, wrong)
    with pytest.raises(DataError, match="not a biosig checkpoint directory"):
        read_meta(tmp_path)
