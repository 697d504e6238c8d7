"""Streaming a sharded dataset into training: an IterableDataset over row groups.

Each epoch the row groups (of the shards that hold any selected subject) are put in an order drawn from
(seed, epoch) and dealt round-robin to the `world_size x num_workers` readers (DDP rank x DataLoader
worker), so every window is read by exactly one reader per epoch. A reader shuffles within a bounded
buffer of windows with its own (seed, epoch, reader) generator, so the stream is the same on every run
with the same seed, world size and worker count. Batches carry the id of the reader that made them: the
trainer counts batches per reader, and `resume(position)` makes each reader skip the batches it already
delivered, which continues an interrupted epoch exactly where it stopped (the same batches in the same
order while every reader still has batches; in an epoch's last batches, after a reader has run out, the
same windows in a possibly different order).
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from biosig.data import rowgroup_cache
from biosig.data.shards import Manifest, open_shard, read_row_group, verify_shard
from biosig.errors import ConfigError

BUFFER_WINDOWS = 8192  # shuffle buffer: 4 row groups of different shards mixed at a time


class ShardStream(IterableDataset):
    """Batches (signals float32 [B, C, T], reader id) of the windows of `subjects` (all when None); with
    `labels`, (signals, labels int64 [B], reader id). Only the columns of `channels` (default: all, in the
    manifest's order) are read; `transform` receives them in that order."""

    def __init__(self, manifest: Manifest, batch_size: int, *, subjects: set[str] | None = None,
                 transform: Callable[[np.ndarray], np.ndarray] | None = None, shuffle: bool = True, seed: int = 0,
                 rank: int = 0, world_size: int = 1, buffer_windows: int = BUFFER_WINDOWS,
                 drop_last: bool = False, verify: bool = True, labels: bool = False,
                 channels: list[str] | None = None) -> None:
        self.manifest = manifest
        self.labels = labels
        self.channels = list(channels) if channels else manifest.channels
        self.batch_size = batch_size
        self.subjects = frozenset(subjects) if subjects is not None else None
        self.transform = transform
        self.shuffle = shuffle
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.buffer_windows = max(buffer_windows, batch_size)
        self.drop_last = drop_last
        self.cache = False  # read row groups through the decoded row-group cache (see use_cache)
        self.units = [(si, g) for si, shard in enumerate(manifest.shards)
                      if self.subjects is None or not self.subjects.isdisjoint(shard.subjects)
                      for g in range(len(shard.row_groups))]
        self.windows = sum(n for shard in manifest.shards for subject, labels in shard.subjects.items()
                           if self.subjects is None or subject in self.subjects for n in labels.values())
        for si in sorted({si for si, _ in self.units}) if verify else ():
            verify_shard(manifest, manifest.shards[si])  # once here, before reader processes start
        # shared with reader processes: they persist across epochs (no per-epoch start-up) and read the
        # epoch that the training loop sets here when each epoch's iteration begins
        self._epoch = multiprocessing.Value("q", 0, lock=False)
        self.skip: dict[int, int] = {}
        self.skip_epoch = -1

    @property
    def decoded_bytes(self) -> int:
        """What this stream's windows take decoded (float32), i.e. what the row-group cache would hold."""
        return self.windows * len(self.channels) * self.manifest.n_samples * 4

    def use_cache(self, setting: str, epochs: int) -> str:
        """Decide whether readers go through the decoded row-group cache (biosig.data.rowgroup_cache), from
        `stream_cache` (auto | on | off) and the epochs planned; returns the decision in words. auto caches
        when the stream is read more than once and its decoded windows take at most half the free space
        where the cache lives: a first epoch that also writes the cache is slower than one that only decodes."""
        root = rowgroup_cache.location()
        size = f"{self.decoded_bytes / 2**30:.2f} GiB"
        if setting == "off" or root is None:
            self.cache = False
            return "row groups decoded every epoch (stream_cache=off)" if root else \
                "row groups decoded every epoch (BIOSIG_CACHE_DIR=off)"
        if setting == "auto":
            if epochs < 2:
                self.cache = False
                return "row groups decoded once each (one epoch: nothing to cache for)"
            free = rowgroup_cache.free_bytes()
            if self.decoded_bytes > free / 2:
                self.cache = False
                return (f"row groups decoded every epoch: the decoded stream ({size}) would take more than half "
                        f"the {free / 2**30:.1f} GiB free under {root} (stream_cache=on forces it)")
        self.cache = True
        return f"decoded row groups cached under {root} ({size}); later epochs read them memory-mapped"

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        self._epoch.value = epoch

    def resume(self, position: "StreamPosition") -> None:
        """In epoch `position.epoch`, skip the batches each reader had already delivered."""
        if position.readers != self.readers(position.readers // self.world_size):
            raise ConfigError(f"the saved stream position has {position.readers} readers, this run "
                              f"{self.world_size} process(es) x {position.readers // self.world_size} workers: resume "
                              "with the same number of processes and data_workers")
        self.skip, self.skip_epoch = dict(position.consumed), position.epoch

    def readers(self, workers: int) -> int:
        return self.world_size * max(1, workers)

    def batches_per_epoch(self, readers: int = 1) -> int:
        """An estimate for schedules: windows / batch size on this rank, plus a partial batch per reader."""
        per_rank = self.windows / self.world_size
        return max(1, math.ceil(per_rank / self.batch_size) + (0 if self.drop_last else readers - 1))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        resuming = self.epoch == self.skip_epoch
        # A DataLoader takes batches from its workers in turn, starting with worker 0; after n batches the
        # next one was due from worker n % workers, so on resume each worker serves the reader that many
        # places on.
        shift = sum(v for k, v in self.skip.items() if k // workers == self.rank) % workers if resuming else 0
        reader = self.rank * workers + (worker + shift) % workers
        readers = self.world_size * workers
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(len(self.units)) if self.shuffle
                 else np.arange(len(self.units)))
        mine = [self.units[i] for i in order[reader::readers]]
        rng = np.random.default_rng([self.seed, self.epoch, reader])
        skip = self.skip.get(reader, 0) if resuming else 0
        ident = torch.tensor(reader)
        for n, batch in enumerate(self._batches(mine, rng)):
            if n >= skip:
                yield (*(torch.from_numpy(a) for a in batch), ident)

    def _batches(self, units: list[tuple[int, int]], rng: np.random.Generator) -> Iterator[tuple[np.ndarray, ...]]:
        """(x,) or (x, labels) batches; the pool holds (x, labels) pairs of row groups."""
        pool: list[tuple[np.ndarray, np.ndarray]] = []
        held = 0
        handle, open_index = None, -1
        for si, group in units:
            if si != open_index:
                handle, open_index = open_shard(self.manifest, self.manifest.shards[si]), si
            x, _, y = read_row_group(self.manifest, self.manifest.shards[si], group, handle, self.subjects,
                                     self.channels, cache=self.cache)
            if not len(x):
                continue
            if self.transform is not None:
                x = self.transform(x)
            pool.append((x, y))
            held += len(x)
            if held >= (self.buffer_windows if self.shuffle else self.batch_size):
                pool, held = yield from self._drain(pool, rng, keep=self.buffer_windows // 2 if self.shuffle else 0)
        yield from self._drain(pool, rng, keep=0, final=True)

    def _drain(self, pool: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator, *, keep: int,
               final: bool = False) -> Iterator[tuple[np.ndarray, ...]]:
        """Emit whole batches from the (shuffled) pool until at most `keep` + a partial batch remain."""
        if not pool:
            return [], 0
        x = np.concatenate([p[0] for p in pool]) if len(pool) > 1 else pool[0][0]
        y = np.concatenate([p[1] for p in pool]) if len(pool) > 1 else pool[0][1]
        # a shuffled order of indices, each batch gathered from it: every window is copied once per batch it
        # leaves in, not once more for a permuted copy of the whole pool
        index = rng.permutation(len(x)) if self.shuffle else np.arange(len(x))
        n_batches = max(0, (len(x) - keep) // self.batch_size)
        for b in range(n_batches):
            part = index[b * self.batch_size:(b + 1) * self.batch_size]
            yield (x[part], y[part]) if self.labels else (x[part],)
        rest = index[n_batches * self.batch_size:]
        if final and len(rest) and not self.drop_last:
            yield (x[rest], y[rest]) if self.labels else (x[rest],)
            return [], 0
        return ([(x[rest], y[rest])], len(rest)) if len(rest) else ([], 0)


@dataclasses.dataclass
class StreamPosition:
    """Batches delivered per reader in the current epoch (saved with a mid-epoch checkpoint)."""

    epoch: int
    readers: int
    consumed: dict[int, int] = dataclasses.field(default_factory=dict)

    @property
    def batches(self) -> int:
        return sum(self.consumed.values())

    def count(self, reader: torch.Tensor) -> None:
        key = int(reader)
        self.consumed[key] = self.consumed.get(key, 0) + 1

    def to_dict(self) -> dict:
        return {"epoch": self.epoch, "readers": self.readers, "consumed": {str(k): v for k, v in self.consumed.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> "StreamPosition":
        return cls(int(data["epoch"]), int(data["readers"]), {int(k): int(v) for k, v in data["consumed"].items()})


class EpochBatches:
    """A stream's DataLoader, one epoch at a time, with the next epoch started early: `prepare(n)` hands
    epoch n to the (persistent) reader processes, which fill their shuffle buffers and prefetch while the
    training process validates, instead of after it (measured 0.3 s of an idle trainer per epoch)."""

    def __init__(self, stream: ShardStream, loader: DataLoader) -> None:
        self.stream, self.loader = stream, loader
        self._ready: tuple[int, Iterator] | None = None

    def prepare(self, epoch: int) -> None:
        if self.loader.num_workers and (self._ready is None or self._ready[0] != epoch):
            self.stream.set_epoch(epoch)
            self._ready = (epoch, iter(self.loader))

    def epoch(self, epoch: int) -> Iterator:
        if self._ready is not None and self._ready[0] == epoch:
            batches, self._ready = self._ready[1], None
            return batches
        self._ready = None
        self.stream.set_epoch(epoch)
        return iter(self.loader)


def stream_loader(stream: ShardStream, workers: int) -> DataLoader:
    """A DataLoader over the stream's own batches; `workers` reader processes (0: read in this one)."""
    if workers < 0:
        raise ConfigError(f"config key 'data_workers' must be >= 0, got {workers}")
    # persistent: reader processes start once and serve every epoch (ShardStream's epoch is shared memory)
    return DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=workers > 0,
                      prefetch_factor=4 if workers else None)
