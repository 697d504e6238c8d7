"""A decoded copy of each streamed row group, memory-mapped on later reads.

Streaming a sharded dataset decodes its parquet row groups every epoch, and decoding FixedSizeList signal
columns is most of a reader's work (cProfile of one reader: 44 % of its time). The first read of a row group
also writes its signals [n, C, T] as an uncompressed `.npy` (and its subjects and labels beside it); every
later read, by any epoch, split or run on this machine, memory-maps that file instead: one reader delivered
16,000 -> 33,000 windows/s in its own process (benchmarks/corpus.py measures the training throughput).

Entries are named by the shard's content digest (the manifest's sha256), the row group and the channels
read, so a changed shard never meets an old entry. They cost disk equal to the decoded windows read; an
entry is written only while the cache's filesystem keeps MIN_FREE_FRACTION of its space free, and a cache
that cannot be written (read-only, full) is skipped. `BIOSIG_CACHE_DIR=off` turns it off with the other
caches; `rm -r ~/.cache/biosig/rowgroups` frees it at any time.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np

from biosig.data.atomic import atomic_path
from biosig.data.storage import cache_root
from biosig.errors import DataError

MIN_FREE_FRACTION = 0.10


def location() -> Path | None:
    """Where entries live ($BIOSIG_CACHE_DIR/rowgroups), or None when caching is off."""
    root = cache_root()
    return None if root is None else root / "rowgroups"


def free_bytes() -> float:
    """Free space of the filesystem that holds (or will hold) the cache."""
    probe = location()
    if probe is None:
        return 0.0
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return float(shutil.disk_usage(probe).free)
    except OSError:
        return 0.0


def _entry(shard_sha256: str, group: int, channels: list[str]) -> Path | None:
    root = location()
    if root is None or not shard_sha256:
        return None
    which = hashlib.sha256("\0".join(channels).encode()).hexdigest()[:12]
    return root / shard_sha256 / f"{group}-{which}"


def read(shard_sha256: str, group: int, channels: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(signals [n, C, T] read-only memory map, subject, labels) of a cached row group, or None."""
    entry = _entry(shard_sha256, group, channels)
    if entry is None or not entry.with_suffix(".npy").is_file():
        return None
    try:
        with np.load(entry.with_suffix(".npz"), allow_pickle=False) as index:
            subject, labels = index["subject"], index["labels"]
        signals = np.load(entry.with_suffix(".npy"), mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, KeyError):  # a damaged entry is a miss
        return None
    if not len(signals) == len(subject) == len(labels):
        return None
    return signals, subject, labels


def write(shard_sha256: str, group: int, channels: list[str], signals: np.ndarray, subject: np.ndarray,
          labels: np.ndarray) -> None:
    """Store a decoded row group (the index first, the signals last: an entry counts once its .npy exists)."""
    entry = _entry(shard_sha256, group, channels)
    if entry is None:
        return
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        usage = shutil.disk_usage(entry.parent)
        if usage.free - signals.nbytes < MIN_FREE_FRACTION * usage.total:
            return
        with atomic_path(entry.with_suffix(".npz")) as tmp, open(tmp, "wb") as handle:
            np.savez(handle, subject=subject.astype(str), labels=labels)
        with atomic_path(entry.with_suffix(".npy")) as tmp, open(tmp, "wb") as handle:
            np.save(handle, np.ascontiguousarray(signals), allow_pickle=False)
    except (OSError, DataError):  # atomic_path turns a full or read-only disk into a DataError
        return
