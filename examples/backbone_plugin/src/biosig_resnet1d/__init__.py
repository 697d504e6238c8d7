"""A 1-D ResNet encoder as a biosig backbone plug-in: channel-independent residual convolutions over each
channel's samples, averaged within each patch into embeddings [B, C, patches, d_model]."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from biosig.backbones.spec import BackboneSpec, mask_percent
from biosig.config import option
from biosig.data.naming import channel_token, channels_from_token
from biosig.errors import ConfigError

ARCH = "resnet1d"
_NAME = re.compile(r"^resnet1d_(?P<channels>[a-z0-9]+(?:-[a-z0-9]+)*)_c(?P<context>\d+)_p(?P<patch>\d+)"
                   r"_d(?P<d_model>\d+)_l(?P<layers>\d+)_m(?P<mask>\d{1,2})_mae$")


def _module():
    """The torch module, defined on first use so that listing and naming never import torch."""
    import torch
    from torch import nn

    class ResidualBlock(nn.Module):
        def __init__(self, width: int, kernel_size: int, dropout: float) -> None:
            super().__init__()
            self.conv1 = nn.Conv1d(width, width, kernel_size, padding=kernel_size // 2)
            self.norm1 = nn.GroupNorm(1, width)
            self.conv2 = nn.Conv1d(width, width, kernel_size, padding=kernel_size // 2)
            self.norm2 = nn.GroupNorm(1, width)
            self.dropout = nn.Dropout(dropout)

        def forward(self, h: torch.Tensor) -> torch.Tensor:
            inner = self.dropout(nn.functional.gelu(self.norm1(self.conv1(h))))
            return nn.functional.gelu(h + self.norm2(self.conv2(inner)))

    class ResNet1DBackbone(nn.Module):
        arch = ARCH
        channel_flexible = True  # the same weights for every channel: any channel set loads

        def __init__(self, channels: list[str], context_length: int = 1024, patch_length: int = 64,
                     d_model: int = 64, num_layers: int = 3, dropout: float = 0.1, kernel_size: int = 7) -> None:
            super().__init__()
            self.channels = list(channels)
            self.config = {"context_length": context_length, "patch_length": patch_length, "d_model": d_model,
                           "num_layers": num_layers, "dropout": dropout, "kernel_size": kernel_size}
            self.stem = nn.Conv1d(1, d_model, kernel_size, padding=kernel_size // 2)
            self.layers = nn.ModuleList(ResidualBlock(d_model, kernel_size, dropout) for _ in range(num_layers))

        context_length = property(lambda self: self.config["context_length"])
        patch_length = property(lambda self: self.config["patch_length"])
        num_patches = property(lambda self: self.context_length // self.patch_length)
        embedding_rows = property(lambda self: len(self.channels))
        d_model = property(lambda self: self.config["d_model"])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, c, t = x.shape
            h = self.stem(x.reshape(b * c, 1, t))
            for layer in self.layers:
                h = layer(h)
            h = h.reshape(b * c, self.d_model, self.num_patches, self.patch_length).mean(-1)  # per patch
            return h.transpose(1, 2).reshape(b, c, self.num_patches, self.d_model)

        def blocks(self) -> list[tuple[str, nn.Module]]:
            return [(f"layers.{i}", layer) for i, layer in enumerate(self.layers)]

        def describe(self) -> dict[str, Any]:
            return {"arch": self.arch, "channels": self.channels, "config": dict(self.config)}

    return ResNet1DBackbone


@dataclasses.dataclass
class ResNet1DOptions:
    """Its own keys, set as `backbone_options=kernel_size=5`."""

    kernel_size: int = option(7, "width of every convolution, in samples (odd keeps the length)")


def _fields(config: Any) -> dict[str, Any]:
    return {"channels": config.channels, "context_length": config.context_length, "patch_length": config.patch_length,
            "d_model": config.d_model, "num_layers": config.num_layers, "mask_ratio": config.mask_ratio}


def _format(f: dict[str, Any]) -> str:
    return (f"resnet1d_{channel_token(f['channels'])}_c{f['context_length']}_p{f['patch_length']}_d{f['d_model']}"
            f"_l{f['num_layers']}_m{mask_percent(f['mask_ratio'])}_mae")


def _parse(name: str) -> dict[str, Any] | None:
    if not (m := _NAME.match(name)):
        return None
    return {"channels": m["channels"].split("-"), "context_length": int(m["context"]), "patch_length": int(m["patch"]),
            "d_model": int(m["d_model"]), "num_layers": int(m["layers"]), "mask_ratio": int(m["mask"]) / 100}


def _command_args(f: dict[str, Any]) -> str:
    return (f"--channels {','.join(channels_from_token(f['channels']))} --context-length {f['context_length']} "
            f"--patch-length {f['patch_length']} --d-model {f['d_model']} --num-layers {f['num_layers']} "
            f"--mask-ratio {f['mask_ratio']}")


def _check(config: Any) -> None:
    if config.context_length % config.patch_length:
        raise ConfigError(f"patch_length {config.patch_length} must divide context_length {config.context_length}")


def _pretraining(backbone, config: Any):
    from biosig.models.pretraining import PretrainModel  # biosig's masked-patch reconstruction

    return PretrainModel(backbone, "mae", config.mask_ratio, 0)


SPEC = BackboneSpec(
    arch=ARCH, summary="1-D ResNet (PaPaGei-style), channel-independent residual convolutions; a plug-in example",
    keys=("context_length", "patch_length", "d_model", "num_layers", "dropout"), options=ResNet1DOptions,
    build=lambda channels, config: _module()(channels, **config), pretraining=_pretraining, name_fields=_fields,
    format_name=_format, parse_name=_parse, command_args=_command_args, check=_check,
    example="resnet1d_ppg-ecg_c1024_p64_d64_l3_m40_mae",
    lora_targets=("conv1", "conv2"),  # adaptation=lora: peft adapters on the residual convolutions
)
