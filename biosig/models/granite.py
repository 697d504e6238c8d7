"""What the granite-tsfm backbones (TTM, TSPulse) share: a config merged over their defaults and checked
(known keys, channel mode, patching) before granite-tsfm is touched, the channel list, the derived sizes
and `describe()`. Each subclass builds its own granite-tsfm model and implements forward and blocks."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import nn

from biosig.errors import ConfigError
from biosig.models.shapes import check_patching

MODES = ("common_channel", "mix_channel")
#: Build-config key of an imported checkpoint: the granite-tsfm fields of its Hugging Face config.json
#: (every one the file sets, derived ones removed), so the model is rebuilt exactly as published.
HF_CONFIG_KEY = "hf_config"
#: Fields granite-tsfm derives while building (recomputed at every build, never carried over).
DERIVED_FIELDS = ("num_patches", "init_processing", "num_patches_layerwise", "num_channels_layerwise",
                  "d_model_layerwise", "decoder_num_patches_layerwise", "decoder_num_channels_layerwise",
                  "decoder_d_model_layerwise")
#: The sizes both start from (the PPG+ECG defaults of `pretrain`); each adds its own keys.
SIZE_DEFAULTS: dict[str, Any] = {"context_length": 1024, "patch_length": 64, "d_model": 64, "num_layers": 3,
                                 "expansion_factor": 2, "dropout": 0.1, "mode": "common_channel"}


class GraniteBackbone(nn.Module):
    arch: ClassVar[str]
    label: ClassVar[str]  # how errors name it (TTM, TSPulse)
    defaults: ClassVar[dict[str, Any]]
    #: keys a build config may carry beyond `defaults` (absent from biosig's own checkpoints)
    optional: ClassVar[tuple[str, ...]] = (HF_CONFIG_KEY,)

    def __init__(self, channels: list[str], config: dict[str, Any]) -> None:
        super().__init__()
        unknown = set(config) - set(self.defaults) - set(self.optional)
        if unknown:
            raise ConfigError(f"unknown {self.label} config keys {sorted(unknown)}; known: {sorted(self.defaults)}")
        self.channels = list(channels)
        self.config = {**self.defaults, **config}
        if not self.config.get(HF_CONFIG_KEY):
            self.config.pop(HF_CONFIG_KEY, None)
        if self.config["mode"] not in MODES:
            raise ConfigError(f"{self.label} mode must be common_channel or mix_channel, got {self.config['mode']!r}")
        check_patching(self.config["context_length"], self.config["patch_length"])

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

    @property
    def d_model(self) -> int:
        return int(self.config["d_model"])

    @property
    def hf_config(self) -> dict[str, Any]:
        """The imported config.json fields (empty for a backbone biosig configured itself)."""
        return dict(self.config.get(HF_CONFIG_KEY) or {})

    def describe(self) -> dict[str, Any]:
        return {"arch": self.arch, "channels": self.channels, "config": dict(self.config)}
