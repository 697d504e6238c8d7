"""What a backbone is to biosig, and what a plug-in declares about one.

A **backbone** is an `nn.Module` that maps windows `x [B, C, T]` (C named channels, T = context_length
samples) to patch embeddings `[B, rows, patches, d_model]` (rows: one per channel for channel-flexible
backbones). Pretraining objectives, heads, staged unfreezing and channel mapping work on that contract
alone, so a new architecture needs no change to them.

A **BackboneSpec** is everything biosig needs to know about one architecture, in one place: its config
keys, how a pretrain config names it in the registry (format and parse of the naming-grammar fragment),
how to build it, how it pretrains, and its presets. Specs are found through the entry-point group
`biosig.backbones` (see biosig.backbones.installed); spec modules import torch only inside `build` and
`pretraining`, so listing them and checking configs stays fast.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

from biosig.config import coerce
from biosig.errors import ConfigError


@runtime_checkable
class Backbone(Protocol):
    """The module contract (torch.nn.Module subclasses satisfy `forward` through __call__)."""

    arch: str
    channels: list[str]
    channel_flexible: bool  # True: channel-dependent tensors (if any) can be mapped by name to other channels

    @property
    def context_length(self) -> int: ...  # samples per window it takes

    @property
    def patch_length(self) -> int: ...  # samples per patch

    @property
    def num_patches(self) -> int: ...

    @property
    def embedding_rows(self) -> int: ...  # rows of the embedding grid, usually len(channels)

    @property
    def d_model(self) -> int: ...

    def __call__(self, x: Any) -> Any: ...  # [B, C, T] -> [B, rows, patches, d_model]

    def blocks(self) -> list[tuple[str, Any]]: ...  # (name, module) in forward order, for staged unfreezing

    def describe(self) -> dict[str, Any]: ...  # {"arch", "channels", "config"}: enough to build it again


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
    """One architecture, declared once. `config` below is a pretrain config (biosig.commands.configs.
    PretrainConfig): shared keys (channels, context_length, patch_length, d_model, num_layers, dropout,
    objective, mask_ratio, …) plus the spec's own keys, declared as its `options` dataclass (typed fields
    with a default and a help line each, biosig.config.option). The pretrain config composes the built-in
    backbones' options as keys of its own (`--d-state 32`); a plug-in's are set as
    `backbone_options=key=value,…`, which stays a compatibility spelling for the built-ins' too."""

    arch: str  # the `arch` value and the first token of its registered names
    summary: str  # one line for `biosig backbones`
    keys: tuple[str, ...]  # pretrain-config keys that form its build config
    build: Callable[[list[str], dict[str, Any]], Any]  # (channels, build config) -> Backbone
    pretraining: Callable[[Any, Any], Any]  # (backbone, pretrain config) -> forward(x, generator) -> (loss, ratio)
    name_fields: Callable[[Any], dict[str, Any]]  # pretrain config -> the fields its name encodes
    format_name: Callable[[dict[str, Any]], str]  # fields -> registered name
    parse_name: Callable[[str], dict[str, Any] | None]  # registered name (no _finetuned) -> fields, or None
    command_args: Callable[[dict[str, Any]], str]  # fields -> `biosig pretrain` arguments that give that name
    objectives: tuple[str, ...] = ("mae",)  # values of `objective` it pretrains with
    options: type | None = None  # its own keys: a dataclass of option(default, help) fields
    check: Callable[[Any], None] = lambda config: None  # ConfigError for configs it cannot build
    pretrain_preset: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # defaults when arch=this
    finetune_preset: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # defaults for its checkpoints
    example: str = ""  # a registered name, for help and errors
    # names (last component) of the layers adaptation=lora puts adapters on; empty: every nn.Linear
    lora_targets: tuple[str, ...] = ()
    # (foreign, ours) key-prefix renames for weights saved by other code (import-checkpoint), beyond the
    # generic ones (a `backbone.`/`module.` prefix removed)
    import_prefixes: tuple[tuple[str, str], ...] = ()

    def option_defaults(self) -> dict[str, Any]:
        return dataclasses.asdict(self.options()) if self.options else {}

    def build_config(self, config: Any) -> dict[str, Any]:
        """The build config of a pretrain config: its `keys`, then its `options`, from the config's own keys
        when the config composes this options dataclass (the built-ins'), else the defaults;
        `backbone_options` overrides both."""
        values = {key: getattr(config, key) for key in self.keys}
        composed = self.options is not None and isinstance(config, self.options)
        options = {key: getattr(config, key) if composed else default for key, default in self.option_defaults().items()}
        return {**values, **options, **parse_options(getattr(config, "backbone_options", ""), self)}

    def name(self, config: Any) -> str:
        return self.format_name(self.name_fields(config))


def parse_options(text: str, spec: BackboneSpec) -> dict[str, Any]:
    """`backbone_options` (`kernel_size=7,fuse_fft=true`) as typed values: each key must be a field of the
    spec's options dataclass and is coerced to its type."""
    hints = typing.get_type_hints(spec.options) if spec.options else {}
    values: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, raw = (part.strip() for part in item.partition("="))
        if not sep or key not in hints:
            raise ConfigError(f"config key 'backbone_options': {item!r} is not key=value with a key of arch "
                              f"{spec.arch} (its options: {', '.join(sorted(hints)) or 'none'})")
        values[key] = coerce(raw, hints[key], key=f"backbone_options {key}", origin="backbone_options")
    return values


def mask_percent(mask_ratio: float) -> int:
    """A mask ratio as the whole percent names carry (`m40`)."""
    pct = int(round(mask_ratio * 100))
    if not 0 < pct < 100:
        raise ConfigError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
    return pct
