"""A classifier for prepared splits from a pretrained checkpoint's backbone: the backbone rebuilt for the
data's channel layout, the pretrained weights mapped onto it by channel name (a subset of the montage drops
the absent channels' slices; new channels get fresh slices under gradient masks), a fresh head on top."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from biosig.backbones import build_backbone
from biosig.errors import ConfigError, TrainingError
from biosig.logs import get_logger
from biosig.models.checkpoint import read_weights
from biosig.models.freezing import GradientMasks
from biosig.models.heads import Classifier
from biosig.models.inflation import drop_channels, map_channels
from biosig.training.settings import HeadSettings

log = get_logger(__name__)


@dataclasses.dataclass
class BuiltClassifier:
    """The model, the gradient masks of its channel-inflated tensors, and what the weight mapping did."""

    model: Classifier
    masks: GradientMasks | None = None
    mapping: str = ""  # how pretrained channels map onto the data's (empty: random initialisation)
    dropped: list[str] = dataclasses.field(default_factory=list)  # pretrained channels absent from the data
    dropped_note: str = ""


def build_classifier(meta: dict[str, Any], weights: Path | None, where: str, channels: list[str], n_classes: int,
                     head: HeadSettings) -> BuiltClassifier:
    """The checkpoint's (`meta`, its biosig.json; `where`, its URI for messages) backbone for `channels` with a
    fresh head; `weights` None builds the same architecture randomly initialised (the scratch reference)."""
    spec = meta["backbone"]
    try:
        backbone = build_backbone(spec["arch"], channels, spec["config"])
    except ConfigError as exc:
        raise TrainingError(f"checkpoint {where}: its biosig.json describes a {spec['arch']} backbone that "
                            f"cannot be built: {exc}") from None
    if not backbone.channel_flexible and channels != meta["channels"]:
        raise TrainingError(f"checkpoint {where} embeds all channels of {meta['channels']} jointly "
                            f"(tokenization=joint) and cannot take channels {channels}: select exactly those "
                            "channels, in that order (config key 'channels'), or pretrain with per_channel tokens")
    if weights is None:
        return BuiltClassifier(_with_head(backbone, n_classes, head))
    state = read_weights(weights)
    old_channels = list(meta["channels"])
    dropped = [c for c in old_channels if c not in channels]
    note = ""
    if dropped:  # a subset of the pretrained montage: keep the present channels' weights, by name
        kept = [c for c in old_channels if c in channels]
        state, resliced = drop_channels(state, build_backbone(spec["arch"], kept, spec["config"]).state_dict(),
                                        old_channels, kept)
        note = (f"pretrained channels {dropped} are absent from the data and were dropped"
                + (f"; {len(resliced)} channel-dependent tensors re-sliced by name" if resliced
                   else " (no channel-dependent tensors)"))
        log.info(f"  note: {note}")
        old_channels = kept
    mapping = map_channels(state, backbone.state_dict(), old_channels, channels)
    try:
        backbone.load_state_dict(mapping.state_dict, strict=True)
    except RuntimeError as exc:
        raise TrainingError(f"checkpoint {where} does not fit a {spec['arch']} backbone: {exc}") from None
    layout = spec["config"].get("mode") or spec["config"].get("tokenization", "?")
    log.info(f"  channel mapping ({layout}): {mapping.describe()}")
    model = _with_head(backbone, n_classes, head)  # after the mapping: the head's draws follow the backbone's
    masks = (GradientMasks(model, {f"backbone.{k}": v for k, v in mapping.pretrained_masks.items()})
             if mapping.pretrained_masks else None)
    return BuiltClassifier(model, masks, mapping.describe(), dropped, note)


def _with_head(backbone, n_classes: int, head: HeadSettings) -> Classifier:
    return Classifier(backbone, n_classes, head=head.head, dropout=head.dropout, pooling=head.pooling)
