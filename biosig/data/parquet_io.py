"""Primary dataset format: parquet with one FixedSizeList<float32>[T] column per channel.

Layout: metadata columns (subject, label, order keys, per-window meta) plus one column per channel
named by the channel; fs, channels, units and column roles in the schema metadata under b"biosig".
Rows are sorted by subject then order keys on write and the order is verified on read.
Signal buffers are read without per-row Python objects: each chunk's flat float32 values are
viewed zero-copy and copied once into the [N, C, T] output array.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from biosig.data.arrow_cache import read_cached, write_cached
from biosig.data.atomic import atomic_path
from biosig.data.channels import single_rate
from biosig.data.paths import require_input_file
from biosig.data.windowset import WindowSet
from biosig.errors import DataError

METADATA_KEY = b"biosig"


def write_parquet(ws: WindowSet, path: str | Path) -> Path:
    """Write `ws` (sorted by subject and order keys) atomically to `path`; returns the path."""
    path = Path(path)
    if path.suffix != ".parquet":
        raise DataError(f"dataset output must end in .parquet, got {path}")
    ws = ws.sorted()
    table = to_arrow(ws)
    # Signals are noise-like float32 and barely compress; leaving them plain keeps reads memcpy-fast.
    compression = {name: ("NONE" if name in ws.channels else "ZSTD") for name in table.column_names}
    with atomic_path(path, needs_bytes=ws.signals.nbytes) as tmp:
        pq.write_table(table, tmp, compression=compression, use_dictionary=[ws.subject_name],
                       write_statistics=[ws.subject_name, ws.label_name, *ws.order_names])
    return path


def stored_digest(path: str | Path) -> str | None:
    """The content digest a biosig parquet recorded when it was written (schema metadata only; None
    when the file is not a readable biosig parquet). `read_parquet(path).digest` verifies the bytes."""
    try:
        raw = (pq.read_schema(path).metadata or {}).get(METADATA_KEY)
        return json.loads(raw).get("digest") if raw else None
    except (pa.ArrowInvalid, OSError, json.JSONDecodeError, AttributeError):
        return None


def to_arrow(ws: WindowSet) -> pa.Table:
    columns: dict[str, pa.Array] = {
        ws.subject_name: pa.array(ws.subject, type=pa.string()).dictionary_encode(),
        ws.label_name: pa.array(ws.labels, type=pa.int64()),
    }
    for i, name in enumerate(ws.order_names):
        columns[name] = pa.array(ws.order[:, i], type=pa.int64())
    for name, values in ws.meta.items():
        columns[name] = pa.array(values, type=pa.float64())
    fields = [pa.field(name, array.type) for name, array in columns.items()]
    # Non-nullable lists of non-nullable floats: the reader then skips definition levels (1.8x faster).
    signal_type = pa.list_(pa.field("item", pa.float32(), nullable=False), ws.n_samples)
    for ci, name in enumerate(ws.channels):
        flat = pa.array(np.ascontiguousarray(ws.signals[:, ci, :]).reshape(-1), type=pa.float32())
        columns[name] = pa.FixedSizeListArray.from_arrays(flat, type=signal_type)
        fields.append(pa.field(name, signal_type, nullable=False))
    metadata = {METADATA_KEY: json.dumps(ws.metadata()).encode()}
    return pa.Table.from_arrays(list(columns.values()), schema=pa.schema(fields, metadata=metadata))


def read_parquet(path: str | Path, *, verify_order: bool = True, cache: bool = True) -> WindowSet:
    """Read a biosig parquet dataset into a validated WindowSet. With `cache`, the decoded table comes from
    (or goes to) the Arrow IPC cache of this file's content (biosig.data.arrow_cache): parquet's
    list-column decoding is skipped on every read after the first. `cache=False` reads the file's own
    bytes (what `doctor` verifies)."""
    path = require_input_file(path, ".parquet", "a .parquet dataset file")
    digest = stored_digest(path)
    cached = read_cached(path, digest) if cache else None
    if cached is not None:
        return from_arrow(cached, where=str(path), verify_order=verify_order, validated_digest=digest or "")
    try:
        # mmap without pre-buffering: measured fastest for large uncompressed signal columns.
        table = pq.read_table(path, memory_map=True, pre_buffer=False)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read {path} as parquet: {exc}") from None
    ws = from_arrow(table, where=str(path), verify_order=verify_order)
    if cache:
        write_cached(path, ws.digest, cache_table(table, ws))  # only a file whose content is the dataset it claims
    return ws


#: the Arrow cache keeps every window's samples as one [C*T] list per row, so a cached read is a zero-copy
#: [N, C, T] view of the memory-mapped file instead of one copy per channel
SIGNALS_COLUMN = "__biosig_signals__"


def cache_table(table: pa.Table, ws: WindowSet) -> pa.Table:
    """`table` as the Arrow cache stores it: the channel columns replaced by one SIGNALS_COLUMN."""
    flat = pa.array(ws.signals.reshape(-1), type=pa.float32())  # ws is sorted like the file's rows
    signals = pa.FixedSizeListArray.from_arrays(flat, ws.n_channels * ws.n_samples)
    kept = table.drop_columns(ws.channels)
    return kept.append_column(SIGNALS_COLUMN, signals).replace_schema_metadata(table.schema.metadata)


def _cached_signals(table: pa.Table, n_channels: int) -> np.ndarray:
    """The zero-copy (read-only) [N, C, T] view of a cache table's SIGNALS_COLUMN."""
    column = table.column(SIGNALS_COLUMN).combine_chunks()  # one chunk as written: no copy
    flat = column.flatten().to_numpy(zero_copy_only=True)
    return flat.reshape(table.num_rows, n_channels, -1)


def from_arrow(table: pa.Table, *, where: str, verify_order: bool = True, validated_digest: str = "") -> WindowSet:
    meta = _schema_metadata(table, where)
    n_rows = table.num_rows
    if n_rows == 0:
        raise DataError(f"empty dataset: {where} has no rows")
    channels = list(meta["channels"])
    subject_col = meta["subject_column"]
    label_col = meta["label_column"]
    order_cols = list(meta["order_columns"])
    meta_cols = list(meta.get("meta_columns", []))
    cached = SIGNALS_COLUMN in table.column_names
    for name in [subject_col, label_col, *order_cols, *meta_cols, *([] if cached else channels)]:
        if name not in table.column_names:
            raise DataError(f"{where} is missing the expected column '{name}' (has {table.column_names})")

    ws = WindowSet(
        signals=_cached_signals(table, len(channels)) if cached else signals_of(table, channels, where),
        labels=_int_column(table, label_col, where),
        subject=_subject_column(table, subject_col, where),
        order=np.column_stack([_int_column(table, c, where) for c in order_cols])
        if order_cols else np.zeros((n_rows, 0), np.int64),
        channels=channels,
        fs=single_rate(meta["fs"], where),
        order_names=order_cols,
        meta={c: _float_column(table, c, where) for c in meta_cols},
        modality=meta.get("modality", ""),
        subject_name=subject_col,
        label_name=label_col,
        class_names=list(meta.get("class_names", [])),
        source=where,
        validated_digest=validated_digest if cached else "",
    )
    if verify_order:
        ws.check_sorted()
    return ws


def signals_of(table: pa.Table, channels: list[str], where: str) -> np.ndarray:
    """The float32 [N, C, T] array of the channel columns `channels` (one copy, no per-row objects)."""
    n_samples = _channel_length(table, channels, where)
    signals = np.empty((table.num_rows, len(channels), n_samples), dtype=np.float32)
    for ci, name in enumerate(channels):
        _fill_channel(signals, ci, table.column(name), n_samples, where, name)
    return signals


def subjects_of(table: pa.Table, name: str, where: str) -> np.ndarray:
    return _subject_column(table, name, where)


def _schema_metadata(table: pa.Table, where: str) -> dict[str, Any]:
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise DataError(
            f"{where} has no biosig schema metadata (fs, channels): write it with biosig "
            "(`biosig log-dataset --source FILE.npz`) or convert it first"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise DataError(f"{where}: biosig schema metadata is not valid JSON") from None
    missing = [k for k in ("fs", "channels", "subject_column", "label_column", "order_columns") if k not in meta]
    if missing:
        raise DataError(f"{where}: biosig schema metadata lacks {missing}")
    return meta


def _channel_length(table: pa.Table, channels: list[str], where: str) -> int:
    lengths = {}
    for name in channels:
        typ = table.schema.field(name).type
        if not pa.types.is_fixed_size_list(typ) or typ.value_type != pa.float32():
            raise DataError(
                f"column '{name}' in {where} must be fixed_size_list<float32>[T] (one window per row), got {typ}"
            )
        lengths[name] = typ.list_size
    if len(set(lengths.values())) > 1:
        raise DataError(f"inconsistent channel lengths in {where}: {lengths} samples per window")
    return next(iter(lengths.values()))


def _fill_channel(out: np.ndarray, ci: int, column: pa.ChunkedArray, t: int, where: str, name: str) -> None:
    if column.null_count:
        raise DataError(f"column '{name}' in {where} has {column.null_count} null windows")
    start = 0
    for chunk in column.chunks:
        # flatten() honours slice offsets; to_numpy(zero_copy_only=True) views the Arrow buffer.
        flat = chunk.flatten().to_numpy(zero_copy_only=True)
        rows = len(chunk)
        out[start:start + rows, ci, :] = flat.reshape(rows, t)
        start += rows


def _int_column(table: pa.Table, name: str, where: str) -> np.ndarray:
    column = table.column(name)
    if not pa.types.is_integer(column.type) or column.null_count:
        raise DataError(f"column '{name}' in {where} must be non-null integers, got {column.type}")
    return column.to_numpy().astype(np.int64, copy=False)


def _float_column(table: pa.Table, name: str, where: str) -> np.ndarray:
    column = table.column(name)
    if not (pa.types.is_floating(column.type) or pa.types.is_integer(column.type)):
        raise DataError(f"column '{name}' in {where} must be numeric, got {column.type}")
    return column.to_numpy().astype(np.float64, copy=False)


def _subject_column(table: pa.Table, name: str, where: str) -> np.ndarray:
    """Decode subjects through their (small) dictionary: no per-row Python strings."""
    column = table.column(name)
    if column.null_count:
        raise DataError(f"column '{name}' in {where} has null subject ids")
    if not pa.types.is_dictionary(column.type):
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            raise DataError(f"column '{name}' in {where} must hold strings, got {column.type}")
        column = pc.dictionary_encode(column)
    if column.num_chunks > 1:  # chunks may carry different dictionaries: unify them first
        column = pa.table({name: column}).unify_dictionaries().column(0)
    chunks = column.chunks or [pa.array([], column.type)]
    dictionary = np.asarray(chunks[0].dictionary.to_pylist(), dtype=str)
    indices = np.concatenate([c.indices.to_numpy() for c in chunks])
    return dictionary[indices]
