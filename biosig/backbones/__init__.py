"""Backbones as plug-ins: every architecture is a BackboneSpec found through the entry-point group
`biosig.backbones` (biosig's own `ttm`, `mamba2` and `tspulse` are declared there like any plug-in):

    [project.entry-points."biosig.backbones"]
    resnet1d = "biosig_resnet1d:SPEC"

`installed()` lists them, `get(arch)` returns one, `build_backbone` / `build_classifier` build modules
from a checkpoint's `backbone` entry ({arch, channels, config}). A plug-in that fails to load is reported
once and skipped; biosig keeps working with the others.
"""

from __future__ import annotations

import functools
from importlib.metadata import entry_points
from typing import Any

from biosig.backbones.spec import Backbone, BackboneSpec, parse_options
from biosig.errors import ConfigError
from biosig.logs import get_logger

__all__ = ["Backbone", "BackboneSpec", "build_backbone", "build_classifier", "get", "installed", "origin",
           "parse_options"]

GROUP = "biosig.backbones"
log = get_logger(__name__)


@functools.cache
def _load() -> dict[str, tuple[BackboneSpec, str]]:
    from biosig.backbones import mamba2, tspulse, ttm

    found: dict[str, tuple[BackboneSpec, str]] = {}
    for point in entry_points(group=GROUP):
        try:
            spec = point.load()
        except Exception as exc:  # a broken plug-in must not break biosig
            log.warning(f"biosig: warning: backbone plug-in {point.name} ({point.value}) failed to load: "
                        f"{type(exc).__name__}: {exc}")
            continue
        if not isinstance(spec, BackboneSpec) or spec.arch != point.name:
            log.warning(f"biosig: warning: entry point {point.name} = {point.value} is not a BackboneSpec with "
                        f"arch {point.name!r}; skipped")
            continue
        found.setdefault(spec.arch, (spec, point.dist.name if point.dist else point.value))
    for spec in (ttm.SPEC, mamba2.SPEC, tspulse.SPEC):  # a source checkout that was never pip-installed has no entry points
        found.setdefault(spec.arch, (spec, "biosig"))
    return found


def installed() -> dict[str, BackboneSpec]:
    """Every backbone this environment has, by arch."""
    return {arch: spec for arch, (spec, _) in _load().items()}


def origin(arch: str) -> str:
    """The distribution that provides `arch` (biosig for the built-ins)."""
    return _load()[arch][1]


def get(arch: str, *, key: str = "arch") -> BackboneSpec:
    specs = installed()
    if arch not in specs:
        raise ConfigError(f"config key '{key}': no backbone {arch!r} is installed; installed: "
                          f"{', '.join(sorted(specs))} (`biosig backbones` lists them; plug-ins register the "
                          f"entry-point group {GROUP})")
    return specs[arch]


def build_backbone(arch: str, channels: list[str], config: dict[str, Any]):
    """A backbone module (weights not loaded) from its arch, channels and build config."""
    return get(arch).build(list(channels), dict(config))


def build_classifier(meta: dict[str, Any]):
    """The Classifier described by a fine-tuned checkpoint's biosig.json (weights not loaded)."""
    from biosig.models.heads import Classifier

    backbone = build_backbone(meta["backbone"]["arch"], meta["backbone"]["channels"], meta["backbone"]["config"])
    head = meta["head"]
    return Classifier(backbone, len(meta["class_names"]), head=head["kind"], dropout=head["dropout"],
                      pooling=head["pooling"])
