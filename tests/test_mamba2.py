"""Mamba-2 backbone: the chunked SSD path against a sequential recurrence, mamba-ssm parameter names,
tokenisation, and (where CUDA and mamba-ssm exist) the kernel path against the pure path."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from biosig.backbones import build_backbone
from biosig.errors import ConfigError
from biosig.models.mamba2 import Mamba2Mixer, cuda_kernel
from biosig.models.shapes import check_mamba2_config

MUSE = ["AF7", "AF8", "TP9", "TP10"]


def sequential_mixer(mixer: Mamba2Mixer, u: torch.Tensor) -> torch.Tensor:
    """Mamba-2 written step by step from the paper's recurrence, independent of biosig's chunked code:
    in_proj -> causal depthwise conv (explicit taps) -> SiLU -> h_t = exp(dt a) h_{t-1} + dt x_t b_t^T,
    y_t = h_t c_t + D x_t -> rmsnorm(y * silu(z)) * w -> out_proj."""
    batch, length, _ = u.shape
    di, n, h, p, g = mixer.d_inner, mixer.d_state, mixer.nheads, mixer.headdim, mixer.ngroups
    zxbcdt = u @ mixer.in_proj.weight.T
    z, xbc, dt = zxbcdt[..., :di], zxbcdt[..., di:2 * di + 2 * g * n], zxbcdt[..., 2 * di + 2 * g * n:]
    weight, width = mixer.conv1d.weight[:, 0, :], mixer.conv1d.weight.shape[-1]
    conv = torch.stack([sum(weight[:, width - 1 - k] * xbc[:, t - k] for k in range(width) if t - k >= 0)
                        + mixer.conv1d.bias for t in range(length)], dim=1)
    xbc = conv * torch.sigmoid(conv)
    x, b, c = xbc[..., :di].reshape(batch, length, h, p), xbc[..., di:di + g * n], xbc[..., di + g * n:]
    b, c = b.reshape(batch, length, g, n), c.reshape(batch, length, g, n)
    dt = F.softplus(dt + mixer.dt_bias)
    a = -torch.exp(mixer.A_log)
    state = torch.zeros(batch, h, p, n, dtype=u.dtype)
    ys = []
    for t in range(length):
        group = torch.arange(h) // (h // g)
        bt, ct = b[:, t, group], c[:, t, group]  # [B, H, N]
        state = torch.exp(dt[:, t] * a)[..., None, None] * state + \
            (dt[:, t, :, None] * x[:, t])[..., None] * bt[:, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, ct) + mixer.D[:, None] * x[:, t])
    y = torch.stack(ys, dim=1).reshape(batch, length, di)
    gated = y * F.silu(z)
    grouped = gated.reshape(batch, length, g, di // g)
    normed = (grouped / torch.sqrt(grouped.pow(2).mean(-1, keepdim=True) + mixer.norm.eps)).reshape(gated.shape)
    return (normed * mixer.norm.weight) @ mixer.out_proj.weight.T


def randomised(mixer: Mamba2Mixer) -> Mamba2Mixer:
    """Random weights everywhere (not only the init's ones and zeros), float64."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in mixer.parameters():
            param.copy_(torch.randn_like(param) * 0.5)
        mixer.A_log.copy_(torch.empty_like(mixer.A_log).uniform_(-1, 2))
    return mixer.double()


@pytest.mark.parametrize("length,chunk,ngroups", [(37, 8, 1), (16, 16, 2), (5, 8, 1)])
def test_chunked_scan_matches_sequential_recurrence_outputs_and_gradients(length, chunk, ngroups):
    torch.manual_seed(0)
    mixer = randomised(Mamba2Mixer(16, d_state=8, d_conv=4, expand=2, headdim=8, ngroups=ngroups, chunk_size=chunk))
    u = torch.randn(2, length, 16, dtype=torch.float64, requires_grad=True)
    chunked = mixer(u)
    reference = sequential_mixer(mixer, u)
    assert chunked.dtype == torch.float64
    assert (chunked - reference).norm() / reference.norm() <= 1e-6

    upstream = torch.randn_like(chunked)
    params = [u, *mixer.parameters()]
    grads = torch.autograd.grad((chunked * upstream).sum(), params)
    expected = torch.autograd.grad((reference * upstream).sum(), params)
    names = ["input", *(name for name, _ in mixer.named_parameters())]
    for name, got, want in zip(names, grads, expected):
        assert (got - want).norm() / want.norm().clamp_min(1e-30) <= 1e-6, name


def test_mixer_parameters_are_named_and_shaped_as_mamba_ssm():
    # mamba_ssm Mamba2(d_model=64, d_state=16, headdim=16, expand=2, ngroups=1): d_inner 128, 8 heads,
    # in_proj out = 2*128 + 2*16 + 8, conv channels = 128 + 2*16.
    shapes = {k: tuple(v.shape) for k, v in Mamba2Mixer(64, d_state=16, headdim=16).state_dict().items()}
    assert shapes == {"in_proj.weight": (296, 64), "conv1d.weight": (160, 1, 4), "conv1d.bias": (160,),
                      "dt_bias": (8,), "A_log": (8,), "D": (8,), "norm.weight": (128,), "out_proj.weight": (64, 128)}


def tiny(tokenization="per_channel", bidirectional=True, **extra):
    return build_backbone("mamba2", MUSE, {"context_length": 128, "patch_length": 16, "d_model": 32, "num_layers": 2,
                                           "d_state": 8, "headdim": 16, "chunk_size": 16,
                                           "tokenization": tokenization, "bidirectional": bidirectional, **extra})


@pytest.mark.parametrize("tokenization,rows", [("per_channel", 4), ("joint", 1)])
def test_backbone_shapes_blocks_and_causality(tokenization, rows):
    backbone = tiny(tokenization, bidirectional=False).eval()
    x = torch.randn(3, 4, 128)
    out = backbone(x)
    assert out.shape == (3, rows, 8, 32)
    assert [name for name, _ in backbone.blocks()] == ["layers.0", "layers.1"]
    assert backbone.num_tokens == 8 * rows
    # Unidirectional: changing the last patch leaves every earlier patch's embedding unchanged.
    changed = x.clone()
    changed[..., -16:] += 1.0
    with torch.no_grad():
        assert torch.allclose(backbone(changed)[:, :, :-1], out[:, :, :-1], atol=1e-6)


def test_bidirectional_backbone_sees_both_sides_and_state_dict_round_trips():
    backbone = tiny().eval()
    x = torch.randn(2, 4, 128)
    changed = x.clone()
    changed[..., -16:] += 1.0
    with torch.no_grad():
        assert not torch.allclose(backbone(changed)[:, :, 0], backbone(x)[:, :, 0])
    again = tiny()
    again.load_state_dict(backbone.state_dict(), strict=True)
    assert any(k.startswith("layers.0.mixer_reverse.A_log") for k in backbone.state_dict())


@pytest.mark.parametrize("config,message", [
    ({"context_length": 8, "patch_length": 16}, "shorter than one patch"),
    ({"patch_length": 24}, "must divide context_length"),
    ({"headdim": 48}, "headdim"),
    ({"tokenization": "raw"}, "tokenization"),
    ({"d_modle": 3}, "unknown Mamba-2 config keys"),
])
def test_bad_backbone_configs_name_the_key(config, message):
    with pytest.raises(ConfigError, match=message):
        check_mamba2_config(config)


def test_cpu_never_imports_mamba_ssm():
    import sys

    tiny()(torch.randn(1, 4, 128))
    assert "mamba_ssm" not in sys.modules


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or cuda_kernel() is None,
                    reason="needs CUDA and mamba-ssm (pip install -e '.[gpu]', see docs/operations.md 'GPU')")
def test_cuda_kernel_path_agrees_with_pure_path_and_mamba_ssm_loads_our_weights():
    from mamba_ssm.modules.mamba2 import Mamba2

    torch.manual_seed(0)
    ours = Mamba2Mixer(64, d_state=16, headdim=16, chunk_size=32).cuda()
    u = torch.randn(2, 100, 64, device="cuda")
    kernel_out = ours(u)
    ours.use_cuda_kernel = False
    pure_out = ours(u)
    assert (kernel_out - pure_out).norm() / pure_out.norm() < 1e-3
    theirs = Mamba2(64, d_state=16, headdim=16, chunk_size=32).cuda()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    assert (theirs(u) - pure_out).norm() / pure_out.norm() < 1e-3
    assert math.isfinite(float(kernel_out.float().sum()))
