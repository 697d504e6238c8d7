"""IBM TSPulse backbone (granite-tsfm), TTM's sibling built for classification and anomaly detection,
built from a config: no hub access.

Facts this module relies on (measured with granite-tsfm 0.3.11): TSPulseModel maps past_values [B, T, C] to
[B, C, patches (+ FFT patches, + register tokens), d]; biosig uses the time-domain patches only and builds
without register tokens and FFT fusion by default; the backbone masks its input whenever the config has
a mask ratio, in eval mode too, so embeddings are taken with enable_masking=False; in common_channel mode
no weight depends on the channel count (mix_channel's channel mixers do), but the reconstruction decoder
does, so pretraining folds channels into the batch (one channel per sequence).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from biosig.models.granite import SIZE_DEFAULTS, GraniteBackbone
from biosig.models.masking import prediction_variance_ratio

#: TSPulseConfig keys biosig sets; everything else keeps granite-tsfm's default.
TSPULSE_DEFAULTS: dict[str, Any] = {
    **SIZE_DEFAULTS,
    "mask_ratio": 0.4,  # used by pretraining only: embeddings are always taken unmasked
    "fuse_fft": False,
}
FFT_REGISTER_TOKENS = 8  # granite-tsfm's default


def _tsfm():
    os.environ.setdefault("TSFM_PYTHON_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tsfm_public.models.tspulse import TSPulseConfig, TSPulseForReconstruction, TSPulseModel

    return TSPulseConfig, TSPulseModel, TSPulseForReconstruction


def tsfm_config(backbone: "TSPulseBackbone"):
    """A fresh TSPulseConfig for `backbone` (its imported config.json fields, or biosig's keys)."""
    config_cls, _, _ = _tsfm()
    if backbone.hf_config:
        return config_cls(**{**backbone.hf_config, "num_input_channels": len(backbone.channels)})
    return _tsfm_config(len(backbone.channels), backbone.config)


def granite_model(config):
    """TSPulseModel of a TSPulseConfig, built the way granite-tsfm's own task classes build their backbone:
    preprocessing derived, then patch register tokens added to the patch counts."""
    from tsfm_public.models.tspulse.modeling_tspulse import register_token_config_update

    _, model_cls, _ = _tsfm()
    config.check_and_init_preprocessing()
    return model_cls(register_token_config_update(config))


def _tsfm_config(n_channels: int, config: dict[str, Any], **extra: Any):
    """A fresh TSPulseConfig per build (checking it caches derived fields in place)."""
    config_cls, _, _ = _tsfm()
    c = config
    return config_cls(num_input_channels=n_channels, context_length=c["context_length"],
                      patch_length=c["patch_length"], patch_stride=c["patch_length"], d_model=c["d_model"],
                      decoder_d_model=c["d_model"], num_layers=c["num_layers"],
                      expansion_factor=c["expansion_factor"], dropout=c["dropout"], mode=c["mode"],
                      decoder_mode=c["mode"], mask_ratio=c["mask_ratio"], mask_type="hybrid",
                      mask_block_length=c["patch_length"], fuse_fft=c["fuse_fft"],
                      # the FFT branch's heads read the register tokens (none: a zero-width layer norm fails)
                      patch_register_tokens=FFT_REGISTER_TOKENS if c["fuse_fft"] else 0,
                      # whole masked patches, as many as the mask ratio allows (at most TSPulse's default 2)
                      num_full_patches_for_hybrid_mask=min(2, int(c["mask_ratio"] * c["context_length"])
                                                           // c["patch_length"]),
                      scaling=None,  # biosig normalises; per-window scaling erases amplitude cues quality needs
                      **extra)


class TSPulseBackbone(GraniteBackbone):
    """forward(x [B, C, T]) -> time-patch embeddings [B, C, patches, d]; blocks() ordered input -> output."""

    arch, label, defaults = "tspulse", "TSPulse", TSPULSE_DEFAULTS
    #: common_channel has no channel-dependent weights; mix_channel's channel mixers are C x C
    channel_flexible = property(lambda self: self.config["mode"] == "common_channel")

    def __init__(self, channels: list[str], **config: Any) -> None:
        super().__init__(channels, config)
        self.model = granite_model(tsfm_config(self))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[2] != self.context_length:
            raise ValueError(f"TSPulse expects [B, C, {self.context_length}], got {list(x.shape)}")
        return self.output_of(self.model, x)

    def output_of(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """The time-patch embeddings `model` (a TSPulseModel of the same config) computes, unmasked."""
        hidden = model(past_values=x.transpose(1, 2), enable_masking=False).last_hidden_state
        return hidden[:, :, :self.num_patches, :]

    def blocks(self) -> list[tuple[str, nn.Module]]:
        """Encoder mixer layers in forward order (input to output)."""
        return [(f"model.encoder_block.mixers.{name}", layer)
                for name, layer in self.model.encoder_block.mixers.named_children()]


class TSPulsePretraining(nn.Module):
    """TSPulse's own masked reconstruction (hybrid patch/point masks, loss on masked points) around a
    TSPulseBackbone: the reconstruction model's backbone *is* ours, so its weights are what gets trained.
    common_channel: channels are folded into the batch (the decoder is channel-count specific);
    mix_channel: all channels at once. forward(x, generator) -> (loss, prediction/target variance ratio);
    TSPulse draws its masks from torch's global RNG (seeded by biosig), not from `generator`."""

    def __init__(self, backbone: TSPulseBackbone, decoder_layers: int = 1) -> None:
        super().__init__()
        self.backbone = backbone
        self.fold = backbone.config["mode"] == "common_channel"
        n_channels = 1 if self.fold else len(backbone.channels)
        _, _, reconstruction_cls = _tsfm()
        self.reconstruction = reconstruction_cls(_tsfm_config(n_channels, backbone.config,
                                                              decoder_num_layers=decoder_layers))
        self.reconstruction.backbone = backbone.model  # one set of backbone weights

    def forward(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, t = x.shape
        values = x.reshape(b * c, t, 1) if self.fold else x.transpose(1, 2)
        out = self.reconstruction(past_values=values, return_loss=True)
        mask = out.mask.bool()
        return out.loss, prediction_variance_ratio(out.reconstruction_outputs[mask], values[mask])
