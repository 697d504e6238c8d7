"""Turn a `source` spec into a WindowSet.

Specs: `synthetic:ppg-ecg` (2 ch, 1024 samples at 125 Hz), `synthetic:quality` (ACC_X/Y/Z, PPG, ECG,
10 s at 125 Hz), `synthetic:eeg` (Muse AF7/AF8/TP9/TP10, 8 s at 256 Hz), or a local `.parquet` /
`.npz` path, local or `s3://bucket/key` (downloaded once into the content-addressed cache), or a
directory / `s3://bucket/prefix/` of such files, concatenated: a file that fails to read is recorded in
`LoadReport.errors` (written as data_errors.csv by the caller) instead of failing the whole load.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from biosig.data.npz_io import read_npz
from biosig.data.parquet_io import read_parquet
from biosig.data.storage import fetch
from biosig.data.synthetic import synthetic_cardio, synthetic_eeg
from biosig.data.windowset import WindowSet
from biosig.errors import DataError

SYNTHETIC_SOURCES = ("synthetic:ppg-ecg", "synthetic:quality", "synthetic:eeg")


@dataclasses.dataclass
class SourceOptions:
    """Options a source may use; each source ignores the ones that do not apply to it."""

    n_subjects: int = 0  # 0: the source's default
    windows_per_subject: int = 0
    window_s: float = 0.0
    good_fraction: float = 0.24
    channels: list[str] | None = None  # for npz files without a channels array
    fs: float | None = None  # for npz files without fs
    seed: int = 0


@dataclasses.dataclass
class FileError:
    file: str
    error: str


def load_source(spec: str, options: SourceOptions | None = None, errors: list[FileError] | None = None) -> WindowSet:
    """The WindowSet of `spec`. For a directory or prefix, unreadable files are appended to `errors`
    (when given) and skipped; with `errors=None` the first one is raised."""
    options = options or SourceOptions()
    if spec.endswith("/") or (not spec.startswith(("s3://", "synthetic:")) and Path(spec).is_dir()):
        return _load_many(spec, options, errors)
    if spec.startswith("synthetic:"):
        return _synthetic(spec, options)
    path = fetch(spec) if spec.startswith("s3://") else Path(spec)
    if path.suffix == ".parquet":
        return read_parquet(path)
    if path.suffix == ".npz":
        return read_npz(path, channels=options.channels, fs=options.fs)
    if not path.exists():
        raise DataError(f"source not found: {spec} (expected one of {', '.join(SYNTHETIC_SOURCES)}, "
                        "or a .parquet/.npz file)")
    raise DataError(f"unsupported source file type '{path.suffix}' for {spec}: expected .parquet or .npz")


DATA_SUFFIXES = (".parquet", ".npz")


def _load_many(spec: str, options: SourceOptions, errors: list[FileError] | None) -> WindowSet:
    files = _list_s3(spec) if spec.startswith("s3://") else sorted(
        str(p) for p in Path(spec).iterdir() if p.suffix in DATA_SUFFIXES)
    if not files:
        raise DataError(f"no .parquet or .npz files in {spec}")
    parts: list[WindowSet] = []
    failed: list[FileError] = []
    for file in files:
        try:
            part = load_source(file, options)
            if parts:
                parts[0].check_compatible(part)
            parts.append(part)
        except DataError as exc:
            if errors is None:
                raise
            failed.append(FileError(file, str(exc)))
    if errors is not None:
        errors.extend(failed)
    if not parts:
        raise DataError(f"none of the {len(files)} files in {spec} could be read; first error: {failed[0].error}")
    return WindowSet.concat(parts, source=spec)


def _list_s3(prefix: str) -> list[str]:
    from biosig.data.storage import s3_client, split_s3_uri

    bucket, key = split_s3_uri(prefix.rstrip("/") + "/x")
    key = key[:-1]
    pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
    return sorted(f"s3://{bucket}/{o['Key']}" for page in pages for o in page.get("Contents", [])
                  if o["Key"].endswith(DATA_SUFFIXES))


def _synthetic(spec: str, o: SourceOptions) -> WindowSet:
    sizes = {}
    if o.n_subjects:
        sizes["n_subjects"] = o.n_subjects
    if o.window_s:
        sizes["window_s"] = o.window_s
    if spec == "synthetic:eeg":
        if o.windows_per_subject:
            sizes["parents_per_subject"] = max(1, o.windows_per_subject // 4)
        return synthetic_eeg(seed=o.seed, **sizes)
    if spec in ("synthetic:ppg-ecg", "synthetic:quality"):
        if o.windows_per_subject:
            sizes["windows_per_subject"] = o.windows_per_subject
        with_acc = spec == "synthetic:quality"
        sizes.setdefault("window_s", 10.0 if with_acc else 1024 / 125)
        return synthetic_cardio(with_acc=with_acc, good_fraction=o.good_fraction, seed=o.seed, **sizes)
    raise DataError(f"unknown synthetic source '{spec}'; choose one of {', '.join(SYNTHETIC_SOURCES)}")
