"""Mamba-2 backbone for EEG: per-channel (or joint-channel) patch tokens through Mamba-2 layers.

`Mamba2Mixer` names and shapes its parameters exactly as `mamba_ssm.modules.mamba2.Mamba2`
(in_proj, conv1d, dt_bias, A_log, D, norm, out_proj), so one state dict serves two compute paths:
 - CUDA tensors with mamba-ssm importable (the `gpu` extra): mamba-ssm's fused Triton kernel;
 - anything else: the pure-PyTorch chunked SSD of the Mamba-2 paper (causal depthwise conv, SiLU,
   selective state-space scan in chunks, gated RMSNorm), checked against a sequential recurrence.
mamba-ssm is imported lazily and only for CUDA tensors: on CPU machines it is never touched (its import
fails there, and transformers' Mamba2 would bind its kernels without a device check).

Tokens: raw-sample sequences are far too slow on CPU, so a window [B, C, T] is cut into patches of
`patch_length` samples. `per_channel` (default, channel-flexible) makes one token per channel and patch,
interleaved time-major (p0: AF7, AF8, TP9, TP10, p1: ...) so the scan mixes channels, with learned channel
and position embeddings; `joint` makes one token per patch of all channels (4x shorter sequences, for a
fixed montage). `bidirectional` adds a reverse-direction mixer per layer: a masked-reconstruction
encoder must see both sides of a gap.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from biosig.models.shapes import MAMBA2_DEFAULTS, check_mamba2_config

# --- the selective scan -------------------------------------------------------------------------------

def segment_sums(x: torch.Tensor) -> torch.Tensor:
    """[..., T] -> [..., T, T] with out[i, j] = x[j+1] + ... + x[i] for i >= j and -inf above the
    diagonal: exp() of it is the decay from step j to step i (built by masked cumsum, which stays exact
    where a difference of cumsums would cancel)."""
    t = x.shape[-1]
    expanded = x[..., None].expand(*x.shape, t)  # [..., k, j] = x[k]
    strictly_lower = torch.tril(torch.ones(t, t, dtype=torch.bool, device=x.device), diagonal=-1)
    sums = expanded.masked_fill(~strictly_lower, 0).cumsum(dim=-2)
    lower = torch.tril(torch.ones(t, t, dtype=torch.bool, device=x.device))
    return sums.masked_fill(~lower, -math.inf)


def ssd_chunked(x: torch.Tensor, dt: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
                chunk_size: int) -> torch.Tensor:
    """The state-space dual scan in chunks (Mamba-2 paper, minimal algorithm), D skip excluded.

    x [B, L, H, P], dt [B, L, H] (positive, after softplus), a [H] (negative), b/c [B, L, G, N].
    Recurrence: h_t = exp(dt_t a) h_{t-1} + dt_t x_t b_t^T, y_t = h_t c_t. Within a chunk the output is a
    masked (decay-weighted) attention-like product; chunk states are passed on by a short recurrence.
    """
    batch, length, heads, _ = x.shape
    pad = (-length) % chunk_size
    if pad:  # zero dt: no input, no decay -> the padded steps change nothing before `length`
        x, dt, b, c = (F.pad(t, (0,) * (2 * (t.ndim - 2)) + (0, pad)) for t in (x, dt, b, c))
    chunks = x.shape[1] // chunk_size
    groups = b.shape[2]

    def chunked(t: torch.Tensor) -> torch.Tensor:  # [B, L, ...] -> [B, chunks, chunk, ...]
        return t.reshape(batch, chunks, chunk_size, *t.shape[2:])

    xs, a_dt = chunked(x * dt[..., None]), chunked(dt * a).permute(0, 3, 1, 2)  # a_dt [B, H, chunks, chunk]
    a_cum = a_dt.cumsum(dim=-1)
    # Within chunks: (C B^T per group, shared by its heads) x decay, applied to x.
    cb = torch.einsum("bzlgn,bzsgn->bgzls", chunked(c), chunked(b))
    decay_within = torch.exp(segment_sums(a_dt))  # [B, H, chunks, chunk, chunk]
    scores = (decay_within.reshape(batch, groups, heads // groups, *decay_within.shape[2:]) * cb[:, :, None])
    y_diag = torch.einsum("bhzls,bzshp->bzlhp", scores.reshape(decay_within.shape), xs)
    bs, cs = (chunked(t.repeat_interleave(heads // groups, dim=2)) for t in (b, c))
    decay_to_end = torch.exp(a_cum[..., -1:] - a_cum)
    states = torch.einsum("bzlhn,bhzl,bzlhp->bzhpn", bs, decay_to_end, xs)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    decay_chunks = torch.exp(segment_sums(F.pad(a_cum[..., -1], (1, 0))))  # [B, H, chunks+1, chunks+1]
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunks, states)[:, :-1]  # state entering each chunk
    y_off = torch.einsum("bzlhn,bzhpn,bhzl->bzlhp", cs, states, torch.exp(a_cum))
    y = (y_diag + y_off).reshape(batch, chunks * chunk_size, heads, -1)
    return y[:, :length]


def _wide(t: torch.Tensor) -> torch.Tensor:
    """At least float32: the scan's exponentials and cumulative sums lose too much in bf16/fp16."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


@functools.lru_cache(maxsize=1)
def cuda_kernel() -> Callable[..., torch.Tensor] | None:
    """mamba-ssm's fused conv + scan + gated norm + out_proj kernel, or None where it cannot import."""
    try:
        from mamba_ssm.ops.triton.ssd_combined import mamba_split_conv1d_scan_combined
    except Exception:
        return None
    return mamba_split_conv1d_scan_combined


class GatedRMSNorm(nn.Module):
    """mamba-ssm's RMSNormGated with norm_before_gate=False: rmsnorm(y * silu(z)) * weight, per group."""

    def __init__(self, dim: int, group_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size, self.eps = group_size, eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        gated = y * F.silu(z)
        grouped = gated.reshape(*gated.shape[:-1], -1, self.group_size)
        normed = grouped * torch.rsqrt(grouped.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.reshape(gated.shape) * self.weight


class Mamba2Mixer(nn.Module):
    """One Mamba-2 mixer, [B, L, d_model] -> [B, L, d_model]; parameters as mamba_ssm's Mamba2
    (defaults there: rmsnorm, norm_before_gate False, no in/out bias, conv bias, D per head)."""

    def __init__(self, d_model: int, d_state: int = 64, d_conv: int = 4, expand: int = 2, headdim: int = 64,
                 ngroups: int = 1, chunk_size: int = 64, a_init_range: tuple[float, float] = (1.0, 16.0),
                 dt_min: float = 1e-3, dt_max: float = 0.1, dt_init_floor: float = 1e-4) -> None:
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.headdim = d_model, d_state, d_conv, headdim
        self.ngroups, self.chunk_size = ngroups, chunk_size
        self.d_inner = expand * d_model
        self.nheads = self.d_inner // headdim
        conv_dim = self.d_inner + 2 * ngroups * d_state
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner + 2 * ngroups * d_state + self.nheads, bias=False)
        self.conv1d = nn.Conv1d(conv_dim, conv_dim, kernel_size=d_conv, groups=conv_dim, padding=d_conv - 1)
        dt = torch.exp(torch.rand(self.nheads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        self.A_log = nn.Parameter(torch.empty(self.nheads).uniform_(*a_init_range).log())
        self.D = nn.Parameter(torch.ones(self.nheads))
        self.norm = GatedRMSNorm(self.d_inner, group_size=self.d_inner // ngroups)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        for param in (self.dt_bias, self.A_log, self.D):
            param._no_weight_decay = True  # as in mamba-ssm: decay would pull the dynamics to zero
        self.use_cuda_kernel = True  # the kernel path where it can run; tests switch it off to compare

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        zxbcdt = self.in_proj(u)
        a = -torch.exp(_wide(self.A_log))
        kernel = cuda_kernel() if u.is_cuda and self.use_cuda_kernel else None
        if kernel is not None:
            return kernel(zxbcdt, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.dt_bias, a, D=self.D,
                          chunk_size=self.chunk_size, activation="silu", rmsnorm_weight=self.norm.weight,
                          rmsnorm_eps=self.norm.eps, outproj_weight=self.out_proj.weight, outproj_bias=None,
                          headdim=self.headdim, ngroups=self.ngroups, norm_before_gate=False)
        return self._forward_torch(zxbcdt, a)

    def _forward_torch(self, zxbcdt: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        batch, length, _ = zxbcdt.shape
        groups_state = self.ngroups * self.d_state
        z, xbc, dt = torch.split(zxbcdt, [self.d_inner, self.d_inner + 2 * groups_state, self.nheads], dim=-1)
        xbc = F.silu(self._causal_conv(xbc))
        x, b, c = torch.split(xbc, [self.d_inner, groups_state, groups_state], dim=-1)
        dt = F.softplus(_wide(dt) + _wide(self.dt_bias))
        x = _wide(x.reshape(batch, length, self.nheads, self.headdim))
        y = ssd_chunked(x, dt, _wide(a), _wide(b.reshape(batch, length, self.ngroups, -1)),
                        _wide(c.reshape(batch, length, self.ngroups, -1)), self.chunk_size)
        y = y + x * _wide(self.D)[:, None]
        y = y.reshape(batch, length, self.d_inner).to(zxbcdt.dtype)
        return self.out_proj(self.norm(y, z))

    def _causal_conv(self, xbc: torch.Tensor) -> torch.Tensor:
        """The depthwise causal conv1d as d_conv shifted multiply-adds on [B, L, D]: same result as
        self.conv1d, but oneDNN's depthwise-conv backward took ~40 % of a CPU training step."""
        length, width = xbc.shape[1], self.d_conv
        padded = F.pad(xbc, (0, 0, width - 1, 0))
        weight = self.conv1d.weight[:, 0, :]  # [D, width]; tap width-1 multiplies the current step
        out = self.conv1d.bias + padded[:, width - 1:] * weight[:, width - 1]
        for k in range(width - 1):
            out = out + padded[:, k:k + length] * weight[:, k]
        return out


class Mamba2Layer(nn.Module):
    """Pre-norm residual block (as mamba-ssm's Block): x + mixer(norm(x)) [+ reverse mixer]."""

    def __init__(self, d_model: int, bidirectional: bool, dropout: float, **mixer: Any) -> None:
        super().__init__()
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.mixer = Mamba2Mixer(d_model, **mixer)
        self.mixer_reverse = Mamba2Mixer(d_model, **mixer) if bidirectional else None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        out = self.mixer(h)
        if self.mixer_reverse is not None:
            out = out + self.mixer_reverse(h.flip(1)).flip(1)
        return x + self.dropout(out)


class Mamba2Backbone(nn.Module):
    """forward(x [B, C, T]) -> embeddings [B, rows, patches, d] (rows = C per-channel, 1 joint);
    blocks() = the Mamba2Layer modules, input -> output. `embed`/`encode` are exposed separately for
    masked pretraining that drops tokens before the encoder."""

    arch = "mamba2"

    def __init__(self, channels: list[str], **config: Any) -> None:
        super().__init__()
        check_mamba2_config(config)
        self.channels = list(channels)
        self.config = {**MAMBA2_DEFAULTS, **config}
        c = self.config
        self.tokenization = c["tokenization"]
        d = c["d_model"]
        token_width = c["patch_length"] * (len(self.channels) if self.joint else 1)
        self.patch_embed = nn.Linear(token_width, d)
        self.position_embed = nn.Parameter(torch.randn(self.num_patches, d) * 0.02)
        self.channel_embed = None if self.joint else nn.Parameter(torch.randn(len(self.channels), d) * 0.02)
        self.layers = nn.ModuleList(self.make_layer(c["bidirectional"], c["dropout"]) for _ in range(c["num_layers"]))
        self.norm_f = nn.RMSNorm(d, eps=1e-5)
        with torch.no_grad():  # mamba-ssm's residual rescaling: keeps the residual stream's scale with depth
            for layer in self.layers:
                for m in (layer.mixer, layer.mixer_reverse):
                    if m is not None:
                        m.out_proj.weight /= math.sqrt(c["num_layers"])

    joint = property(lambda self: self.tokenization == "joint")
    context_length = property(lambda self: int(self.config["context_length"]))
    patch_length = property(lambda self: int(self.config["patch_length"]))
    num_patches = property(lambda self: self.context_length // self.patch_length)
    d_model = property(lambda self: int(self.config["d_model"]))
    embedding_rows = property(lambda self: 1 if self.joint else len(self.channels))
    #: per-channel tokens let a checkpoint move to another channel layout (channel embeddings by name)
    channel_flexible = property(lambda self: not self.joint)

    @property
    def token_width(self) -> int:
        return self.patch_embed.in_features

    @property
    def num_tokens(self) -> int:
        return self.num_patches * self.embedding_rows

    def token_values(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T] -> raw patch values per token [B, N, token_width], in sequence order."""
        self._check_input(x)
        b, ch, _ = x.shape
        patches = x.reshape(b, ch, self.num_patches, self.patch_length).transpose(1, 2)  # [B, P, C, L]
        return patches.reshape(b, self.num_patches, -1) if self.joint else patches.reshape(b, -1, self.patch_length)

    def token_positions(self) -> torch.Tensor:
        """[N, d]: what each sequence slot is (patch position, plus channel for per-channel tokens)."""
        if self.joint:
            return self.position_embed
        return (self.position_embed[:, None, :] + self.channel_embed[None, :, :]).reshape(self.num_tokens, -1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(self.token_values(x)) + self.token_positions()

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mamba-2 layers over any token sequence [B, n, d] (all tokens, or the visible subset)."""
        for layer in self.layers:
            tokens = layer(tokens)
        return self.norm_f(tokens)

    def to_grid(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, d] in sequence order -> [B, rows, patches, d]."""
        b = tokens.shape[0]
        return tokens.reshape(b, self.num_patches, self.embedding_rows, -1).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_grid(self.encode(self.embed(x)))

    def blocks(self) -> list[tuple[str, nn.Module]]:
        return [(name, m) for name, m in self.named_modules() if isinstance(m, Mamba2Layer)]

    def make_layer(self, bidirectional: bool = True, dropout: float = 0.0) -> Mamba2Layer:
        """A fresh layer shaped like this backbone's (its own layers, a masked-reconstruction decoder)."""
        c = self.config
        mixer = {k: c[k] for k in ("d_state", "d_conv", "expand", "headdim", "ngroups", "chunk_size")}
        return Mamba2Layer(self.d_model, bidirectional, dropout, **mixer)

    def describe(self) -> dict[str, Any]:
        return {"arch": self.arch, "channels": self.channels, "config": dict(self.config)}

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[1] != len(self.channels) or x.shape[2] != self.context_length:
            raise ValueError(f"Mamba-2 backbone expects [B, {len(self.channels)}, {self.context_length}], "
                             f"got {list(x.shape)}")
