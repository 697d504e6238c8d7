"""Sharded datasets: a directory or `s3://` prefix of immutable, content-named parquet shards plus
`manifest.json`, the same form for 1 or 10,000 shards.

A shard is an ordinary biosig parquet file (biosig.data.parquet_io: sorted rows, schema metadata), written
in row groups of ROW_GROUP_ROWS windows and named `part-{sha256[:16]}.parquet` after its bytes, so a name
never points at other content. The manifest lists, per shard, its file, sha256, size, rows, row-group
sizes and a subject index (rows per label per subject), so splits, profiles and training plans are made
without reading signals. The dataset digest is sha256 over the shard digests in manifest order.

A shard is checked against its manifest sha256 before it is read; a machine remembers a checked shard
under $BIOSIG_CACHE_DIR/verified (like the Arrow cache), so a corpus is hashed once per machine, not once
per epoch. A local shard is remembered by device, inode, size, modification and change time: any write
changes the change time (restoring the size and modification time by hand does not hide it); an S3 object
by its size and modification time (objects are replaced whole, never edited in place).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from biosig.data import rowgroup_cache
from biosig.data.atomic import atomic_path, disk_error
from biosig.data.parquet_io import from_arrow, signals_of, subjects_of, to_arrow
from biosig.data.storage import arrow_filesystem, cache_root
from biosig.data.windowset import WindowSet
from biosig.errors import DataError

MANIFEST_FILE = "manifest.json"
BUILD_FILE = "_build.json"  # the plan of a build (biosig.data.build); without a manifest: not finished
FORMAT = "biosig.sharded/1"
ROW_GROUP_ROWS = 2048  # windows per row group: the unit a streaming reader fetches and shuffles
SHARD_ROWS = 32768  # default bound on windows per shard (256 MB of 2-channel 1024-sample windows)
HASH_CHUNK = 8 << 20


def join(root: str, name: str) -> str:
    return f"{root.rstrip('/')}/{name}"


def check_finished(spec: str) -> None:
    """DataError for a folder or prefix that holds a build without its manifest (its shards are not a
    dataset yet: some may be missing)."""
    if spec.startswith("s3://"):
        unfinished = read_text(join(spec, BUILD_FILE)) is not None and read_text(join(spec, MANIFEST_FILE)) is None
    else:
        unfinished = (Path(spec) / BUILD_FILE).is_file() and not (Path(spec) / MANIFEST_FILE).is_file()
    if not unfinished:
        return
    from biosig.data.build import every_group_built  # build imports this module

    if every_group_built(spec):
        raise DataError(f"{spec} holds a finished sharded build whose {MANIFEST_FILE} is missing (deleted?): write "
                        f"it again with `biosig dataset finalize {spec}`")
    raise DataError(f"{spec} holds an unfinished sharded build ({BUILD_FILE} but no {MANIFEST_FILE}): finish "
                    f"it (run the remaining shard=i/n parts, then `biosig dataset finalize {spec}`)")


def is_sharded(spec: str) -> bool:
    """True for a directory or s3:// prefix that holds a manifest.json."""
    if spec.startswith(("synthetic:", "muse:", "butppg:", "vitaldb:")) or spec.endswith((".parquet", ".npz")):
        return False
    if not spec.startswith("s3://"):
        return (Path(spec) / MANIFEST_FILE).is_file()
    fs, path = arrow_filesystem(spec)
    try:
        return fs.get_file_info(join(path, MANIFEST_FILE)).type == pafs.FileType.File
    except OSError:
        return False


@dataclasses.dataclass
class Shard:
    file: str
    sha256: str
    bytes: int
    rows: int
    row_groups: list[int]
    subjects: dict[str, dict[str, int]]  # subject -> {label: windows}

    def label_counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for labels in self.subjects.values():
            for label, n in labels.items():
                counts[int(label)] = counts.get(int(label), 0) + n
        return counts


@dataclasses.dataclass
class Manifest:
    """What manifest.json records; `root` is where it was read from (not stored)."""

    schema: dict[str, Any]  # WindowSet.metadata() of the shards without their own digests
    shards: list[Shard]
    digest: str
    name: str = ""
    build: dict[str, Any] = dataclasses.field(default_factory=dict)
    root: str = ""

    @property
    def n_windows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def channels(self) -> list[str]:
        return list(self.schema["channels"])

    @property
    def fs(self) -> float:
        return float(self.schema["fs"])

    @property
    def n_samples(self) -> int:
        return int(self.schema["n_samples"])

    def uri(self, shard: Shard) -> str:
        return join(self.root, shard.file)

    def subject_labels(self) -> dict[str, dict[int, int]]:
        """Every subject's windows per label over all shards."""
        merged: dict[str, dict[int, int]] = {}
        for shard in self.shards:
            for subject, labels in shard.subjects.items():
                into = merged.setdefault(subject, {})
                for label, n in labels.items():
                    into[int(label)] = into.get(int(label), 0) + n
        return merged

    def label_counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for shard in self.shards:
            for label, n in shard.label_counts().items():
                counts[label] = counts.get(label, 0) + n
        return dict(sorted(counts.items()))

    def to_json(self) -> str:
        body = {"format": FORMAT, "name": self.name, "digest": self.digest, "n_windows": self.n_windows,
                "schema": self.schema, "build": self.build,
                "shards": [dataclasses.asdict(s) for s in self.shards]}
        return json.dumps(body, indent=1)


def dataset_digest(shard_digests: Iterable[str]) -> str:
    h = hashlib.sha256()
    for digest in shard_digests:
        h.update(bytes.fromhex(digest))
    return h.hexdigest()


def make_manifest(shards: list[Shard], schema: dict[str, Any], *, name: str, build: dict[str, Any],
                  root: str) -> Manifest:
    return Manifest(schema=schema, shards=shards, digest=dataset_digest(s.sha256 for s in shards), name=name,
                    build=build, root=root)


# ------------------------------------------------------------------------------------------------ writing
def shard_schema(ws: WindowSet) -> dict[str, Any]:
    return {k: v for k, v in ws.metadata().items() if k != "digest"}


def subject_index(ws: WindowSet) -> dict[str, dict[str, int]]:
    index: dict[str, dict[str, int]] = {}
    pairs, counts = np.unique(np.column_stack([ws.subject, ws.labels.astype(str)]), axis=0, return_counts=True)
    for (subject, label), n in zip(pairs.tolist(), counts.tolist()):
        index.setdefault(subject, {})[label] = int(n)
    return index


def write_shard(ws: WindowSet, root: str, *, scratch: Path, row_group_rows: int = ROW_GROUP_ROWS) -> Shard:
    """Write `ws` (sorted) as one content-named shard under `root` (a directory or s3:// prefix). The bytes
    go to a file in `scratch` first, are hashed, then moved (local) or uploaded (S3) under their name; a
    shard already there under that name is the same content and is kept."""
    ws = ws.sorted()
    table = to_arrow(ws)
    compression = {name: ("NONE" if name in ws.channels else "ZSTD") for name in table.column_names}
    scratch.mkdir(parents=True, exist_ok=True)
    local = scratch / f".shard-{ws.digest[:16]}.{os.getpid()}.tmp"  # the pid: a restart sweeps a killed writer's
    try:
        pq.write_table(table, local, row_group_size=row_group_rows, compression=compression,
                       use_dictionary=[ws.subject_name],
                       write_statistics=[ws.subject_name, ws.label_name, *ws.order_names])
        sha = file_sha256(local)
        groups = [g.num_rows for g in (pq.ParquetFile(local).metadata.row_group(i)
                                       for i in range(pq.ParquetFile(local).metadata.num_row_groups))]
        shard = Shard(file=f"part-{sha[:16]}.parquet", sha256=sha, bytes=local.stat().st_size, rows=ws.n_windows,
                      row_groups=groups, subjects=subject_index(ws))
        _place(local, join(root, shard.file), shard.bytes)
    except OSError as exc:
        raise disk_error(exc, scratch, table.nbytes) or exc from None
    finally:
        local.unlink(missing_ok=True)
    return shard


def _place(local: Path, uri: str, size: int) -> None:
    fs, path = arrow_filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File and info.size == size:
        return  # content-named: the same bytes were written before (a restarted build)
    if isinstance(fs, pafs.LocalFileSystem):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            local.replace(tmp)
        return
    pafs.copy_files(str(local), path, destination_filesystem=fs)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def write_text(uri: str, text: str) -> None:
    """Write a small text file (manifest, build records) atomically on a local disk; S3 PUTs are atomic."""
    fs, path = arrow_filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        with atomic_path(path) as tmp:
            tmp.write_text(text)
        return
    with fs.open_output_stream(path) as out:
        out.write(text.encode())


def read_text(uri: str) -> str | None:
    fs, path = arrow_filesystem(uri)
    try:
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with fs.open_input_stream(path) as stream:
            return stream.read().decode()
    except OSError as exc:
        raise DataError(f"cannot read {uri}: {exc}") from None


# ------------------------------------------------------------------------------------------------ reading
def read_manifest(root: str) -> Manifest:
    """The manifest of the sharded dataset at `root`, checked for the fields readers rely on."""
    root = root.rstrip("/") if root.startswith("s3://") else str(Path(root).resolve())
    where = join(root, MANIFEST_FILE)
    text = read_text(where)
    if text is None:
        raise DataError(f"{where} not found: a sharded dataset needs its manifest (`biosig dataset finalize "
                        f"{root}` writes it once every part is built)")
    try:
        body = json.loads(text)
        shards = [Shard(**s) for s in body["shards"]]
        manifest = Manifest(schema=body["schema"], shards=shards, digest=body["digest"], name=body.get("name", ""),
                            build=body.get("build", {}), root=root)
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DataError(f"{where} is not a biosig manifest ({type(exc).__name__}: {exc})") from None
    if body.get("format") != FORMAT:
        raise DataError(f"{where}: field 'format' is {body.get('format')!r}, this biosig reads {FORMAT!r}")
    missing = [k for k in ("channels", "fs", "n_samples", "subject_column", "label_column", "order_columns")
               if k not in manifest.schema]
    if missing or not shards:
        raise DataError(f"{where}: field 'schema' lacks {missing}" if missing else f"{where} lists no shards")
    if dataset_digest(s.sha256 for s in shards) != manifest.digest:
        raise DataError(f"{where}: field 'digest' does not match its shards' digests (the manifest was edited)")
    return manifest


def verify_shard(manifest: Manifest, shard: Shard, *, remembered: bool = True) -> None:
    """DataError naming the shard unless its bytes hash to the manifest's sha256 (a check a machine
    remembers per shard by size and modification time; `remembered=False` hashes regardless)."""
    uri = manifest.uri(shard)
    fs, path = arrow_filesystem(uri)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise DataError(f"shard {shard.file} of {manifest.root} is missing (listed in {MANIFEST_FILE})")
    if info.size != shard.bytes:
        raise DataError(f"shard {shard.file} of {manifest.root} has {info.size} bytes, {MANIFEST_FILE} records "
                        f"{shard.bytes}: it changed after it was written; the dataset cannot be used")
    stamp = _stamp(fs, path, info)
    marker = _verified_marker(shard.sha256)
    if remembered and marker is not None and marker.is_file() and marker.read_text() == stamp:
        return
    h = hashlib.sha256()
    with fs.open_input_stream(path) as stream:
        while chunk := stream.read(HASH_CHUNK):
            h.update(chunk)
    if h.hexdigest() != shard.sha256:
        raise DataError(f"shard {shard.file} of {manifest.root}: its bytes no longer match {MANIFEST_FILE} "
                        f"(sha256 {h.hexdigest()[:12]}…, recorded {shard.sha256[:12]}…); the dataset cannot be used")
    if marker is not None:
        try:
            with atomic_path(marker) as tmp:
                tmp.write_text(stamp)
        except OSError:
            pass  # a read-only cache only costs the next reader a re-hash


def _stamp(fs: pafs.FileSystem, path: str, info: pafs.FileInfo) -> str:
    """What must be unchanged for a remembered check to stand (see the module docstring)."""
    if isinstance(fs, pafs.LocalFileSystem):
        st = os.stat(path)
        return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
    return f"{info.size}:{info.mtime_ns}"


def _verified_marker(sha256: str) -> Path | None:
    root = cache_root()
    return None if root is None else root / "verified" / sha256


def verify_all(manifest: Manifest) -> None:
    """Every shard checked; a DataError names every shard that fails, not just the first."""
    problems = []
    for shard in manifest.shards:
        try:
            verify_shard(manifest, shard)
        except DataError as exc:
            problems.append(str(exc))
    if len(problems) == 1:
        raise DataError(problems[0])
    if problems:
        raise DataError(f"{len(problems)} shards of {manifest.root} fail their check: " + "; ".join(
            p.replace(f" of {manifest.root}", "") for p in problems))


def open_shard(manifest: Manifest, shard: Shard) -> pq.ParquetFile:
    """A ParquetFile over the shard (S3: ranged reads, each row group's columns fetched together)."""
    fs, path = arrow_filesystem(manifest.uri(shard))
    remote = not isinstance(fs, pafs.LocalFileSystem)
    try:
        return pq.ParquetFile(fs.open_input_file(path), pre_buffer=remote, memory_map=False)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read shard {shard.file} of {manifest.root}: {exc}") from None


def read_row_group(manifest: Manifest, shard: Shard, group: int, handle: pq.ParquetFile,
                   subjects: frozenset[str] | None = None, channels: list[str] | None = None,
                   cache: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signals [n, C, T], subject [n], labels [n]) of one row group, restricted to `subjects` when given;
    only the columns of `channels` (default: all) are read. With `cache`, a row group decoded once on this
    machine is read from its decoded copy (biosig.data.rowgroup_cache; signals then come as a read-only memory
    map), and one decoded now is kept there."""
    channels = channels or manifest.channels
    if not cache:  # only the wanted subjects' windows are decoded
        return _decode_row_group(manifest, shard, group, handle, channels, subjects)
    cached = rowgroup_cache.read(shard.sha256, group, channels)
    if cached is None:  # the whole row group is decoded and kept: other splits and epochs read it too
        cached = _decode_row_group(manifest, shard, group, handle, channels)
        rowgroup_cache.write(shard.sha256, group, channels, *cached)
    signals, subject, labels = cached
    keep = _kept(subject, subjects)
    return (signals, subject, labels) if keep is None else (signals[keep], subject[keep], labels[keep])


def _kept(subject: np.ndarray, subjects: frozenset[str] | None) -> np.ndarray | None:
    """Indices of the rows of `subjects`, or None when every row is kept."""
    if subjects is None:
        return None
    keep = np.flatnonzero(np.isin(subject, list(subjects)))
    return None if keep.size == len(subject) else keep


def _decode_row_group(manifest: Manifest, shard: Shard, group: int, handle: pq.ParquetFile, channels: list[str],
                      subjects: frozenset[str] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A row group decoded from parquet: the rows of `subjects` (all when None)."""
    where = f"{manifest.uri(shard)} row group {group}"
    subject_column, label_column = manifest.schema["subject_column"], manifest.schema["label_column"]
    try:
        table = handle.read_row_group(group, columns=[*channels, subject_column, label_column])
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"cannot read {where}: {exc}") from None
    subject = subjects_of(table, subject_column, where)
    if (keep := _kept(subject, subjects)) is not None:
        table, subject = table.take(keep), subject[keep]
    labels = table.column(label_column).to_numpy().astype(np.int64, copy=False)
    return signals_of(table, channels, where), subject, labels


def split_labels(manifest: Manifest, subjects: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """(labels, subject) of the windows of `subjects` in `subject_windows` order, from those two columns
    only (a few bytes per window: a corpus's labels fit in memory when its signals do not)."""
    subject_column, label_column = manifest.schema["subject_column"], manifest.schema["label_column"]
    labels, subject = [], []
    for table, where in _row_groups_of(manifest, subjects, columns=[subject_column, label_column]):
        names = subjects_of(table, subject_column, where)
        keep = np.flatnonzero(np.isin(names, list(subjects)))
        subject.append(names[keep])
        labels.append(table.column(label_column).to_numpy()[keep].astype(np.int64))
    if not labels:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=str)
    return np.concatenate(labels), np.concatenate(subject)


def _row_groups_of(manifest: Manifest, subjects: set[str],
                   columns: list[str] | None = None) -> Iterator[tuple[pa.Table, str]]:
    """(row group, its name for messages) of every shard whose subject index names one of `subjects`, in
    order; each shard checked against the manifest first."""
    for shard in manifest.shards:
        if subjects.isdisjoint(shard.subjects):
            continue
        verify_shard(manifest, shard)
        handle = open_shard(manifest, shard)
        for group in range(len(shard.row_groups)):
            where = f"{manifest.uri(shard)} row group {group}"
            try:
                yield handle.read_row_group(group, columns=columns), where
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataError(f"cannot read {where}: {exc}") from None


def read_sharded(root: str) -> WindowSet:
    """Every shard of a (small enough) sharded dataset as one WindowSet (its `digest` is of the rows; the
    dataset's recorded identity is the manifest's digest)."""
    manifest = read_manifest(root)
    parts = []
    for shard in manifest.shards:
        verify_shard(manifest, shard)
        parts.append(from_arrow(open_shard(manifest, shard).read(), where=manifest.uri(shard)))
    return WindowSet.concat(parts, source=manifest.root) if len(parts) > 1 else \
        dataclasses.replace(parts[0], source=manifest.root)


def subject_windows(manifest: Manifest, subjects: set[str]) -> Iterator[WindowSet]:
    """The windows of `subjects`, one row group at a time in shard order (memory: one row group), reading
    only the shards whose subject index names one of them."""
    for table, where in _row_groups_of(manifest, subjects):
        part = from_arrow(table, where=where, verify_order=False)
        keep = np.flatnonzero(np.isin(part.subject, list(subjects)))
        if keep.size:
            yield part.take(keep)


def split_digest(manifest: Manifest, subjects: Iterable[str]) -> str:
    """The identity of a subject subset of a sharded dataset without reading it: the shards are immutable
    and named by content, so the manifest digest and the sorted subjects fix the rows."""
    body = json.dumps({"dataset": manifest.digest, "subjects": sorted(subjects)})
    return hashlib.sha256(body.encode()).hexdigest()


def sample_windows(manifest: Manifest, max_windows: int, seed: int = 0,
                   subjects: set[str] | None = None) -> WindowSet:
    """Up to `max_windows` windows (of `subjects`, when given) from row groups drawn at random over the
    corpus: for profiles, plots and normalisation statistics."""
    rng = np.random.default_rng(seed)
    units = [(i, g) for i, s in enumerate(manifest.shards) if subjects is None or not subjects.isdisjoint(s.subjects)
             for g in range(len(s.row_groups))]
    parts, total = [], 0
    for index in rng.permutation(len(units)):
        si, group = units[index]
        shard = manifest.shards[si]
        verify_shard(manifest, shard)
        table = open_shard(manifest, shard).read_row_group(group)
        part = from_arrow(table, where=manifest.uri(shard), verify_order=False)
        keep = np.flatnonzero(np.isin(part.subject, list(subjects))) if subjects is not None \
            else np.arange(part.n_windows)
        if not keep.size:
            continue
        parts.append(part.take(keep[:max_windows - total]))
        total += parts[-1].n_windows
        if total >= max_windows:
            break
    if not parts:
        raise DataError(f"{manifest.root} holds no windows of the {len(subjects or ())} subject(s) asked for")
    return WindowSet.concat(parts, source=manifest.root)
