"""A decoded copy of each parquet dataset as an uncompressed Arrow IPC file, memory-mapped on read.

Parquet stays the format datasets are written, logged and shared in (pandas, polars and DuckDB read it),
but decoding its FixedSizeList signal columns goes through repetition levels: reading 20,000 x 5 x 1024
float32 windows took 0.5 s of parquet decoding against 0.11 s for np.load of the same array. The IPC
copy holds the same Arrow table with nothing to decode, so the second and later reads of a file cost a
memory map plus one copy into the [N, C, T] array (benchmarks/dataset_io.py).

Entries are named by the dataset's content digest and remember the parquet file's size and mtime; a
file that changed, or a copy whose digest does not match its content, is never served from the cache.
`BIOSIG_CACHE_DIR` moves the cache (default ~/.cache/biosig), `BIOSIG_CACHE_DIR=off` turns it off.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from biosig.data.atomic import atomic_path
from biosig.data.storage import cache_root
from biosig.errors import DataError

SOURCE_KEY = b"biosig.cache.source"  # "size:mtime_ns" of the parquet file the entry was made from


def cache_path(digest: str) -> Path | None:
    root = cache_root()
    return None if root is None or not digest else root / "arrow" / f"{digest}.arrow"


def _stamp(source: Path) -> bytes:
    stat = source.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}".encode()


def read_cached(source: Path, digest: str | None) -> pa.Table | None:
    """The cached table of `source`, or None (no entry, another file's entry, unreadable entry)."""
    path = cache_path(digest or "")
    if path is None or not path.is_file():
        return None
    try:
        with pa.memory_map(str(path)) as mapped:
            table = pa.ipc.open_file(mapped).read_all()
    except (pa.ArrowInvalid, OSError):
        return None
    if (table.schema.metadata or {}).get(SOURCE_KEY) != _stamp(source):
        return None
    return table.replace_schema_metadata({k: v for k, v in table.schema.metadata.items() if k != SOURCE_KEY})


def write_cached(source: Path, digest: str, table: pa.Table) -> None:
    """Store `table` (read from `source`, whose content has `digest`) atomically; a cache that cannot be
    written (read-only home, full disk) is skipped, never an error."""
    path = cache_path(digest)
    if path is None:
        return
    stamped = table.replace_schema_metadata({**(table.schema.metadata or {}), SOURCE_KEY: _stamp(source)})
    try:
        with atomic_path(path) as tmp, pa.OSFile(str(tmp), "wb") as sink, \
                pa.ipc.new_file(sink, stamped.schema) as writer:
            writer.write_table(stamped)
    except (OSError, DataError):  # atomic_path turns a full or read-only disk into a DataError
        return
    os.utime(path)  # recently used entries are the ones to keep when pruning by age
