"""IBM Tiny Time Mixers backbone (granite-tsfm), built from a config: no hub access.

Facts this module relies on (measured with granite-tsfm 0.3.11): build from a fresh TinyTimeMixerConfig every time
(building writes derived fields into the config); the backbone maps [B, T, C] to [B, C, patches, d];
mixer blocks are `TinyTimeMixerLayer` modules; `import tsfm_public` is slow and resets logging, so it
is imported lazily here and nowhere else.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from biosig.errors import ConfigError
from biosig.models.shapes import check_patching

#: TinyTimeMixerConfig keys biosig sets; everything else keeps granite-tsfm's default.
TTM_DEFAULTS: dict[str, Any] = {
    "context_length": 1024,
    "patch_length": 64,
    "d_model": 64,
    "num_layers": 3,
    "expansion_factor": 2,
    "dropout": 0.1,
    "mode": "common_channel",
    "scaling": None,  # biosig normalises; 'std' scaling erases amplitude cues that quality labels need
    "adaptive_patching_levels": 0,
}


def _tsfm():
    os.environ.setdefault("TSFM_PYTHON_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig, TinyTimeMixerModel
    from tsfm_public.models.tinytimemixer.modeling_tinytimemixer import TinyTimeMixerLayer

    return TinyTimeMixerConfig, TinyTimeMixerModel, TinyTimeMixerLayer


class TTMBackbone(nn.Module):
    """forward(x [B, C, T]) -> embeddings [B, C, patches, d]; blocks() ordered input -> output."""

    arch = "ttm"

    def __init__(self, channels: list[str], **config: Any) -> None:
        super().__init__()
        unknown = set(config) - set(TTM_DEFAULTS)
        if unknown:
            raise ConfigError(f"unknown TTM config keys {sorted(unknown)}; known: {sorted(TTM_DEFAULTS)}")
        self.channels = list(channels)
        self.config = {**TTM_DEFAULTS, **config}
        if self.config["mode"] not in ("common_channel", "mix_channel"):
            raise ConfigError(f"TTM mode must be common_channel or mix_channel, got {self.config['mode']!r}")
        check_patching(self.config["context_length"], self.config["patch_length"])
        config_cls, model_cls, _ = _tsfm()
        # A fresh config object per build: building mutates it (num_patches). The bare backbone has no
        # forecasting head, but the config insists on a prediction_length; any positive value is inert here.
        tsfm_config = config_cls(num_input_channels=len(self.channels), patch_stride=self.config["patch_length"],
                                 prediction_length=16, **self.config)
        self.model = model_cls(tsfm_config)

    @property
    def context_length(self) -> int:
        return int(self.config["context_length"])

    @property
    def patch_length(self) -> int:
        return int(self.config["patch_length"])

    @property
    def num_patches(self) -> int:
        return self.context_length // self.patch_length

    @property
    def embedding_rows(self) -> int:
        """Rows of the embedding grid [B, rows, patches, d]: one per channel."""
        return len(self.channels)

    #: common_channel TTM has no channel-dependent tensors; mix_channel ones are inflated by name
    channel_flexible = True

    @property
    def d_model(self) -> int:
        return int(self.config["d_model"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != len(self.channels) or x.shape[2] != self.context_length:
            raise ValueError(f"TTM expects [B, {len(self.channels)}, {self.context_length}], got {list(x.shape)}")
        return self.model(past_values=x.transpose(1, 2)).last_hidden_state

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """Mixer layers by module type, in forward order (input to output)."""
        _, _, layer_cls = _tsfm()
        return [(name, module) for name, module in self.model.named_modules() if isinstance(module, layer_cls)]

    def describe(self) -> dict[str, Any]:
        return {"arch": self.arch, "channels": self.channels, "config": dict(self.config)}
