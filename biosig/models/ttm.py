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

from biosig.models.granite import HF_CONFIG_KEY, SIZE_DEFAULTS, GraniteBackbone

#: TinyTimeMixerConfig keys biosig sets; everything else keeps granite-tsfm's default.
TTM_DEFAULTS: dict[str, Any] = {
    **SIZE_DEFAULTS,
    "scaling": None,  # biosig normalises; 'std' scaling erases amplitude cues that quality labels need
    "adaptive_patching_levels": 0,
}
#: With resolution prefix tuning (TTM r2.1) the encoder prepends one patch embedding a sampling-resolution
#: token; granite-tsfm's tokens run from minutes to weeks, so biosignals take 0, its out-of-vocabulary token.
FREQUENCY_TOKEN_KEY = "frequency_token"


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
    optional = (HF_CONFIG_KEY, FREQUENCY_TOKEN_KEY)

    def __init__(self, channels: list[str], **config: Any) -> None:
        super().__init__(channels, config)
        _, model_cls, _ = _tsfm()
        self.model = model_cls(self.tsfm_config())
        if self.prefix_tuning:
            self.register_buffer("freq_token", torch.tensor([int(self.config.get(FREQUENCY_TOKEN_KEY, 0))]),
                                 persistent=False)

    def tsfm_config(self, **overrides: Any):
        """A fresh TinyTimeMixerConfig (building mutates it: num_patches): an imported checkpoint's own fields
        under biosig's keys. The bare backbone has no forecasting head, but the config insists on a
        prediction_length; any positive value is inert here."""
        config_cls, _, _ = _tsfm()
        keys = {k: v for k, v in self.config.items() if k not in self.optional}
        return config_cls(**{"prediction_length": 16, **self.hf_config, **keys, **overrides,
                             "num_input_channels": len(self.channels), "patch_stride": self.config["patch_length"]})

    @property
    def prefix_tuning(self) -> bool:
        return bool(self.hf_config.get("resolution_prefix_tuning"))

    @property
    def num_patches(self) -> int:
        """Patch rows of the output, as granite-tsfm counts them (with a resolution prefix or register tokens)."""
        return int(self.model.config.num_patches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != len(self.channels) or x.shape[2] != self.context_length:
            raise ValueError(f"TTM expects [B, {len(self.channels)}, {self.context_length}], got {list(x.shape)}")
        return self.output_of(self.model, x)

    def output_of(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """What this backbone computes, with `model` (a TinyTimeMixerModel of the same config) doing the work:
        the same call checks an exported folder against biosig's own module."""
        freq_token = self.freq_token.expand(x.shape[0]) if self.prefix_tuning else None
        return model(past_values=x.transpose(1, 2), freq_token=freq_token).last_hidden_state

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """Mixer layers by module type, in forward order (input to output)."""
        _, _, layer_cls = _tsfm()
        return [(name, module) for name, module in self.model.named_modules() if isinstance(module, layer_cls)]
