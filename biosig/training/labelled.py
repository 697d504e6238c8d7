"""Labelled train/val/test splits as training reads them (`LabelledSplits`): model inputs in memory, or a
sharded dataset's splits read when needed (`StreamedSplits`). `commands.finetune_data` prepares them from a
dataset and a checkpoint; the trainer, the references and the probes only read them."""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np

from biosig.data.adapt import ChannelStats, WindowScaling, WindowTransform, select_channels
from biosig.data.shards import Manifest, subject_windows
from biosig.training import loop
from biosig.training.stream import ShardStream

SCORE_BATCH = 256  # windows per forward pass when scoring a split


@dataclasses.dataclass
class StreamedSplits:
    """The signals of a sharded dataset's splits, read when needed: `parts` in a fixed order (the order of
    the split's labels), `train_stream` shuffled for training."""

    manifest: Manifest
    subjects: dict[str, set[str]]
    transform: WindowTransform  # the model's channels (only those are read) -> context fit -> normalisation

    def parts(self, split: str, *, raw: bool = False) -> Iterator[np.ndarray]:
        """Model inputs (or, `raw`, the selected channels at full length) one row group at a time."""
        t = self.transform
        for part in subject_windows(self.manifest, self.subjects[split]):
            x = select_channels(part.signals, part.channels, t.want, t.where)
            yield x if raw else t(x)

    def train_stream(self, batch_size: int, seed: int, dist: loop.Distributed) -> ShardStream:
        return ShardStream(self.manifest, batch_size, subjects=self.subjects["train"], transform=self.transform,
                           seed=seed, rank=dist.rank, world_size=dist.world_size, verify=False, labels=True,
                           channels=self.transform.have)


@dataclasses.dataclass
class LabelledSplits:
    """One prepared dataset's splits: labels, subjects and model inputs per split, and how inputs were made."""

    x: dict[str, np.ndarray]  # model inputs per split (empty when streamed)
    y: dict[str, np.ndarray]
    subject: dict[str, np.ndarray]
    class_names: list[str]
    channels: list[str]
    stats: ChannelStats | WindowScaling
    test_digest: str  # content digest of the test split: champion comparisons need the same one
    raw: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # selected channels, before context fit
    fs: float = 0.0
    note: str = ""  # why normalisation=auto chose what it chose, when it matters
    streamed: StreamedSplits | None = None

    def inputs(self, split: str, batch_size: int = SCORE_BATCH) -> Iterator[np.ndarray]:
        """The model inputs of `split` in batches, in the order of `y[split]`."""
        parts = self.streamed.parts(split) if self.streamed is not None else [self.x[split]]
        for x in parts:
            for start in range(0, len(x), batch_size):
                yield x[start:start + batch_size]

    def raw_inputs(self, split: str) -> Iterator[np.ndarray]:
        """The selected channels at full length (what the features reference sees), in the order of `y`."""
        if self.streamed is not None:
            yield from self.streamed.parts(split, raw=True)
        else:
            yield self.raw[split]
