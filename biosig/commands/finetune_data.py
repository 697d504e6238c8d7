"""What fine-tuning trains and is tested on: the labelled train/val/test splits of a dataset after channel
selection by name, context fit and train-only normalisation (`LabelledSplits`).

A dataset in memory is prepared whole (`prepare_data`). A sharded dataset is prepared without holding its
signals (`prepare_streamed`): the subject split from the manifest's subject index, labels and subjects
from those two columns only, the normalisation from a sample of training windows; then training reads a
shuffled `ShardStream` (split by DDP rank x DataLoader worker) and validation and test read their
subjects' row groups in a fixed order, one row group at a time.
"""

from __future__ import annotations

import numpy as np

from biosig.commands.configs import FinetuneConfig
from biosig.data import WindowSet
from biosig.data.adapt import ChannelStats, WindowScaling, WindowTransform, fit_context, select_channels, unit_mismatch
from biosig.data.shards import Manifest, sample_windows, split_digest, split_labels, verify_all
from biosig.data.splits import (
    SPLITS,
    majority_label,
    manifest_split,
    manifest_subject_split,
    nested_subjects,
    read_split_table,
    subject_majorities,
    subject_split,
)
from biosig.errors import DataError, TrainingError
from biosig.registry.discovery import ResolvedCheckpoint
from biosig.training.labelled import LabelledSplits, StreamedSplits

NORMALISATION_SAMPLE = 16384  # training windows a streamed dataset's normalisation is fitted on


def prepare_data(ws: WindowSet, where: str, config: FinetuneConfig, parent: ResolvedCheckpoint,
                 splits: dict[str, WindowSet] | None = None) -> LabelledSplits:
    """Labels checked, subject split (unless given), channels by name, context fit, train-only
    normalisation."""
    if (ws.labels < 0).any():
        raise TrainingError(f"{where} has {(ws.labels < 0).sum()} unlabelled windows: fine-tuning needs labels")
    channels = _channels(ws.channels, config, parent, where)
    _require_label_set(np.unique(ws.labels), ws.class_names, where)
    n_classes = max(len(ws.class_names), int(ws.labels.max()) + 1)
    class_names = ws.class_names or [str(k) for k in range(n_classes)]
    if splits is None:
        splits = (manifest_split(ws, config.split_manifest) if config.split_manifest
                  else subject_split(ws, config.val_fraction, config.test_fraction, seed=config.seed))
        _require_splits(splits, where)
    if config.train_subjects:
        kept = nested_subjects(subject_majorities(splits["train"]), config.train_subjects, config.seed)
        splits = {**splits, "train": splits["train"].take(np.flatnonzero(np.isin(splits["train"].subject,
                                                                                   sorted(kept))))}
    _require_two_classes(splits["train"].labels, class_names, where)
    x, raw = {}, {}
    for split, part in splits.items():
        raw[split] = select_channels(part.signals, ws.channels, channels, where)
        x[split] = fit_context(raw[split], ws.fs, target_length=parent.meta["context_length"], target_fs=parent.meta["fs"],
                               policy=config.context_fit, where=where, patch_length=parent.meta["patch_length"])
    stats, note = _normalisation(config, x["train"], splits["train"].subject, channels)
    return LabelledSplits(x={s: stats.apply(v) for s, v in x.items()}, y={s: p.labels for s, p in splits.items()},
                        subject={s: p.subject for s, p in splits.items()}, class_names=class_names, channels=channels,
                        stats=stats, test_digest=splits["test"].digest if "test" in splits else "", raw=raw, fs=ws.fs,
                        note=note)


def prepare_streamed(manifest: Manifest, where: str, config: FinetuneConfig,
                     parent: ResolvedCheckpoint) -> LabelledSplits:
    """`prepare_data` for a sharded dataset, reading only labels, subjects and a normalisation sample; the
    test split's digest is `split_digest` (the manifest digest and the test subjects)."""
    verify_all(manifest)  # every shard's bytes against the manifest, once per machine
    subjects = _split_subjects(manifest, config)
    _require_splits(subjects, where)
    if config.train_subjects:
        index = manifest.subject_labels()
        majority = {s: majority_label(index[s]) for s in subjects["train"]}
        subjects = {**subjects, "train": nested_subjects(majority, config.train_subjects, config.seed)}
    y, subject = {}, {}
    for split, members in subjects.items():
        y[split], subject[split] = split_labels(manifest, members)
        if (y[split] < 0).any():
            raise TrainingError(f"{where} has {(y[split] < 0).sum()} unlabelled windows in its {split} split: "
                                "fine-tuning needs labels")
    known = list(manifest.schema.get("class_names") or [])
    _require_label_set(np.unique(np.concatenate(list(y.values()))), known, where)
    n_classes = max(len(known), max(int(v.max()) for v in y.values() if len(v)) + 1)
    class_names = known or [str(k) for k in range(n_classes)]
    _require_two_classes(y["train"], class_names, where)
    channels = _channels(manifest.channels, config, parent, where)
    sample = sample_windows(manifest, NORMALISATION_SAMPLE, seed=config.seed, subjects=subjects["train"])
    selected = select_channels(sample.signals, sample.channels, channels, where)  # names a missing channel
    transform = WindowTransform(channels, channels, manifest.fs, parent.meta["context_length"], config.context_fit,
                                parent.meta["patch_length"], where, target_fs=parent.meta["fs"])
    transform.stats, note = _normalisation(config, transform(selected), sample.subject, channels)
    return LabelledSplits(x={}, y=y, subject=subject, class_names=class_names, channels=channels, stats=transform.stats,
                        test_digest=split_digest(manifest, subjects["test"]), fs=manifest.fs, note=note,
                        streamed=StreamedSplits(manifest, subjects, transform))


def _split_subjects(manifest: Manifest, config: FinetuneConfig) -> dict[str, set[str]]:
    """The subjects of each split: from `split_manifest` when given, else the seeded stratified split."""
    if not config.split_manifest:
        return manifest_subject_split(manifest, config.val_fraction, config.test_fraction, seed=config.seed)
    mapping = read_split_table(config.split_manifest)
    everyone = manifest.subject_labels()
    missing = sorted(set(everyone) - set(mapping))
    if missing:
        raise DataError(f"split manifest {config.split_manifest} does not assign {len(missing)} subject(s) of "
                        f"{manifest.root}, e.g. {', '.join(missing[:5])}")
    return {name: members for name in SPLITS if (members := {s for s in everyone if mapping[s] == name})}


def _channels(have: list[str], config: FinetuneConfig, parent: ResolvedCheckpoint, where: str) -> list[str]:
    channels = config.channels or list(have)
    if set(channels) == set(parent.meta["channels"]):
        # Same montage in another order: take the checkpoint's, so channel-indexed weights (Mamba-2 channel
        # embeddings, TTM channel mixers) line up; inputs are selected by name either way.
        channels = list(parent.meta["channels"])
    missing = [c for c in parent.meta["channels"] if c not in channels]
    if len(missing) == len(parent.meta["channels"]):
        raise TrainingError(f"the checkpoint was pretrained on {parent.meta['channels']}; channels {missing} are "
                            f"missing from the fine-tuning data ({where} has {have}, selected {channels}): "
                            "no pretrained channel in common, a different modality needs its own checkpoint")
    return channels


def _require_splits(splits: dict, where: str) -> None:
    for needed in ("train", "val", "test"):
        if needed not in splits:
            raise DataError(f"the {needed} split of {where} is empty: check split_manifest or the fractions")


def _require_label_set(present: np.ndarray, class_names: list[str], where: str) -> None:
    """Without class names a classifier's labels are 0..K-1: labels 7 and 9 alone would make a 10-class
    head with 8 classes no window has."""
    if class_names or np.array_equal(present, np.arange(len(present))):
        return
    absent = sorted(set(range(int(present.max()) + 1)) - set(present.tolist()))
    raise DataError(f"{where} has labels {present.tolist()} and no class names: classes {absent} have no window; "
                    "relabel to 0..K-1 or store class_names with the dataset")


def _require_two_classes(train_labels: np.ndarray, class_names: list[str], where: str) -> None:
    present = np.unique(train_labels)
    if len(present) < 2:
        raise TrainingError(f"the training split of {where} holds only class {class_names[present[0]]!r}: "
                            "a classifier needs at least two classes in training")


def _normalisation(config: FinetuneConfig, x_train: np.ndarray, subject: np.ndarray,
                   channels: list[str]) -> tuple[ChannelStats | WindowScaling, str]:
    """The normalisation fitted on training inputs; with normalisation=auto, per window when subjects'
    amplitudes differ as recordings in different units do (and the note that says so)."""
    kind, note = config.normalisation, ""
    if kind == "auto":
        mismatch = unit_mismatch(x_train, subject, channels)
        kind = "window" if mismatch else "global"
        if mismatch:
            note = ("subjects' typical amplitudes differ by " + ", ".join(f"{c} {r:.0f}x" for c, r in mismatch.items())
                    + " (different units?): normalising each window by its own amplitude (normalisation=window)")
    return (WindowScaling if kind == "window" else ChannelStats).fit(x_train, channels), note
