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

from biosig.models.granite import SIZE_DEFAULTS, GraniteBackbone

#: TinyTimeMixerConfig keys biosig sets; everything else keeps granite-tsfm's default.
TTM_DEFAULTS: dict[str, Any] = {
    **SIZE_DEFAULTS,
    "scaling": None,  # biosig normalises; 'std' scaling erases amplitude cues that quality labels need
    "adaptive_patching_levels": 0,
}


def _tsfm():
    os.environ.setdefault("TSFM_PYTHON_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tsfm_public.models.tinytimemixer import TinyTimeMixerConfig, TinyTimeMixerModel
    from tsfm_public.models.tinytimemixer.modeling_tinytimemixer import TinyTimeMixerLayer

    return TinyTimeMixerConfig, TinyTimeMixerModel, TinyTimeMixerLayer


class TTMBackbone(GraniteBackbone):
    """forward(x [B, C, T]) -> embeddings [B, C, patches, d]; blocks() ordered input -> output."""

    arch, label, defaults = "ttm", "TTM", TTM_DEFAULTS
    #: common_channel TTM has no channel-dependent tensors; mix_channel ones are inflated by name
    channel_flexible = True

    def __init__(self, channels: list[str], **config: Any) -> None:
        super().__init__(channels, config)
        config_cls, model_cls, _ = _tsfm()
        # A fresh config object per build: building mutates it (num_patches). The bare backbone has no
        # forecasting head, but the config insists on a prediction_length; any positive value is inert here.
        tsfm_config = config_cls(num_input_channels=len(self.channels), patch_stride=self.config["patch_length"],
                                 prediction_length=16, **self.config)
        self.model = model_cls(tsfm_config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != len(self.channels) or x.shape[2] != self.context_length:
            raise ValueError(f"TTM expects [B, {len(self.channels)}, {self.context_length}], got {list(x.shape)}")
        return self.model(past_values=x.transpose(1, 2)).last_hidden_state

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """Mixer layers by module type, in forward order (input to output)."""
        _, _, layer_cls = _tsfm()
        return [(name, module) for name, module in self.model.named_modules() if isinstance(module, layer_cls)]
