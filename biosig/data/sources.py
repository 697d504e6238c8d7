"""Turn a `source` spec into a WindowSet.

Specs: `synthetic:ppg-ecg` (2 ch, 1024 samples at 125 Hz), `synthetic:quality` (ACC_X/Y/Z, PPG, ECG,
10 s at 125 Hz), `synthetic:eeg` (Muse AF7/AF8/TP9/TP10, 8 s at 256 Hz), `muse:DIR` / `muse:s3://…/`
(Muse CSV exports, see biosig.data.muse), or a local `.parquet` /
`.npz` path, local or `s3://bucket/key` (downloaded once into the content-addressed cache), a sharded
dataset (a directory or `s3://…/` prefix with manifest.json, see biosig.data.shards), or a
directory / `s3://bucket/prefix/` of such files, concatenated: a file that fails to read is recorded in
`LoadReport.errors` (written as data_errors.csv by the caller) instead of failing the whole load.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from biosig.data.naming import is_dataset_reference
from biosig.data.npz_io import read_npz
from biosig.data.parquet_io import read_parquet
from biosig.data.shards import check_finished, is_sharded, read_sharded
from biosig.data.storage import fetch
from biosig.data.synthetic import synthetic_cardio, synthetic_eeg
from biosig.data.windowset import WindowSet
from biosig.errors import ConfigError, DataError, FileProblem

SYNTHETIC_SOURCES = ("synthetic:ppg-ecg", "synthetic:quality", "synthetic:eeg")


@dataclasses.dataclass
class SourceOptions:
    """Options a source may use; each source ignores the ones that do not apply to it."""

    n_subjects: int = 0  # 0: the source's default
    windows_per_subject: int = 0
    window_s: float = 0.0
    good_fraction: float = 0.24
    channels: list[str] | None = None  # for npz files without a channels array
    fs: float | None = None  # for npz files without fs; Muse CSV sampling rate (default 256 Hz)
    labels: str = ""  # Muse: participants CSV (Participant,Remission); default participants.csv beside the files
    subs_per_parent: int = 4  # Muse: sub-windows per parent window
    preprocess: str = ""  # BUT PPG / VitalDB: preprocessing YAML (biosig.data.preprocess); default per reader
    missing_acc: str = "exclude"  # BUT PPG records without ACC: exclude | zero (zero-filled, acc_present=0)
    ppg_colour: int = 0  # BUT PPG: which of the 3 PPG colour channels
    seed: int = 0


def check_source_spec(key: str, spec: str) -> None:
    """What can be known about a source before reading it: a known synthetic name, an existing local
    file of a supported type or directory (remote s3:// sources are checked when they are read)."""
    where = spec.split(":", 1)[1] if spec.startswith(("muse:", "butppg:", "vitaldb:")) else spec
    if spec.startswith("synthetic:"):
        if spec not in SYNTHETIC_SOURCES:
            raise ConfigError(f"config key '{key}': unknown synthetic source {spec!r} "
                              f"(known: {', '.join(SYNTHETIC_SOURCES)})")
        return
    if where.startswith("s3://"):
        return
    path = Path(where)
    if not path.exists() and is_dataset_reference(spec):
        return  # a recorded dataset (name, digest, another machine's file): found through the tracking store
    if not path.exists():
        raise ConfigError(f"config key '{key}': source not found: {where} (expected one of "
                          f"{', '.join(SYNTHETIC_SOURCES)}, a .parquet/.npz file or a directory)")
    if where != spec and not path.is_dir():
        raise ConfigError(f"config key '{key}': {spec.split(':')[0]}: needs a directory, got the file {where}")
    if path.is_dir():
        try:
            check_finished(where)
        except DataError as exc:
            raise ConfigError(f"config key '{key}': {exc}") from None
    if path.is_file() and path.suffix not in DATA_SUFFIXES:
        raise ConfigError(f"config key '{key}': unsupported source file type '{path.suffix}' for {spec}: "
                          "expected .parquet or .npz")


def load_source(spec: str, options: SourceOptions | None = None, errors: list[FileProblem] | None = None) -> WindowSet:
    """The WindowSet of `spec`. For a directory or prefix, unreadable files are appended to `errors`
    (when given) and skipped; with `errors=None` the first one is raised."""
    options = options or SourceOptions()
    if spec.startswith("muse:"):
        return _load_muse(spec, options, errors)
    if spec.startswith(("butppg:", "vitaldb:")):
        return _load_recordings(spec, options, errors)
    if _is_folder(spec) and is_sharded(spec):
        return read_sharded(spec)
    if _is_folder(spec):
        check_finished(spec)
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


def _is_folder(spec: str) -> bool:
    if spec.startswith("s3://"):
        return spec.endswith("/") or not Path(spec).suffix
    return spec.endswith("/") or (not spec.startswith("synthetic:") and Path(spec).is_dir())


def _load_many(spec: str, options: SourceOptions, errors: list[FileProblem] | None) -> WindowSet:
    files = _list_s3(spec) if spec.startswith("s3://") else sorted(
        str(p) for p in Path(spec).iterdir() if p.suffix in DATA_SUFFIXES)
    if not files:
        raise DataError(f"no .parquet or .npz files in {spec}")
    parts: list[WindowSet] = []
    failed: list[FileProblem] = []
    for file in files:
        try:
            part = load_source(file, options)
            if parts:
                parts[0].check_compatible(part)
            parts.append(part)
        except DataError as exc:
            if errors is None:
                raise
            failed.append(FileProblem(file, str(exc)))
    if errors is not None:
        errors.extend(failed)
    if not parts:
        raise DataError(f"none of the {len(files)} files in {spec} could be read; first error: {failed[0].error}")
    return WindowSet.concat(parts, source=spec)


def _list_s3(prefix: str, suffixes: tuple[str, ...] = DATA_SUFFIXES) -> list[str]:
    from biosig.data.storage import list_objects

    return [uri for uri in list_objects(prefix) if uri.endswith(suffixes)]


def _load_muse(spec: str, options: SourceOptions, errors: list[FileProblem] | None) -> WindowSet:
    """`muse:DIR` or `muse:s3://bucket/prefix/`: every recording CSV there (see biosig.data.muse)."""
    from biosig.data import muse

    where = spec[len("muse:"):]
    remote = where.startswith("s3://")
    if remote:
        files = _list_s3(where, (".csv",))
    elif Path(where).is_dir():
        files = sorted(str(p) for p in Path(where).glob("*.csv"))
    else:
        raise DataError(f"Muse source {spec}: {where} is not a directory (expected a folder of Muse CSV exports)")
    labels_file = options.labels or next((f for f in files if Path(f).name == muse.PARTICIPANTS_FILE), "")
    recordings_files = [f for f in files if Path(f).name != muse.PARTICIPANTS_FILE and f != labels_file]
    if not recordings_files:
        raise DataError(f"Muse source {spec}: no .csv recordings in {where}")
    labels, participant_of = muse.read_participants(_local(labels_file)) if labels_file else ({}, {})
    fs = options.fs or muse.MUSE_FS
    recordings, problems = [], []
    for file in recordings_files:
        try:
            rec = muse.read_muse_csv(_local(file), fs, participant_of.get(Path(file).stem))
        except DataError as exc:
            if errors is None:
                raise
            problems.append(FileProblem(file, str(exc)))
            continue
        recordings.append(rec)
        problems += [FileProblem(file, warning, "warning") for warning in rec.warnings]
    unlabelled = sorted({r.participant for r in recordings} - set(labels))
    if labels_file and unlabelled:
        problems.append(FileProblem(labels_file, f"no Remission label for participant(s) {unlabelled}: their "
                                               "windows are unlabelled (-1)", "warning"))
    if errors is not None:
        errors.extend(problems)
    if not recordings:
        raise DataError(f"none of the {len(recordings_files)} Muse recordings in {where} could be read; first error: "
                        f"{problems[0].error}")
    return muse.window_recordings(recordings, labels, fs=fs, window_s=options.window_s or 8.0,
                                  subs_per_parent=options.subs_per_parent, source=spec)


def _local(file: str) -> Path:
    return fetch(file) if file.startswith("s3://") else Path(file)


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


def recording_root(spec: str) -> Path:
    """The local folder of a `butppg:` / `vitaldb:` source (an s3:// prefix is mirrored into the cache)."""
    from biosig.data.storage import mirror_prefix

    kind, where = spec.split(":", 1)
    root = mirror_prefix(where) if where.startswith("s3://") else Path(where)
    if not root.is_dir():
        raise DataError(f"{kind} source {spec}: {where} is not a directory")
    return root


def record_units(spec: str) -> list[str]:
    """The records of a `butppg:` (folder names) or `vitaldb:` (.vital paths relative to the root) source,
    sorted: the units a parallel build divides."""
    from biosig.data import recordings

    kind, where = spec.split(":", 1)
    root = recording_root(spec)
    if kind == "butppg":
        return [p.name for p in recordings.butppg_records(root)]
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*.vital"))
    if not files:
        raise DataError(f"vitaldb source {spec}: no .vital files in {where}")
    return files


def _load_recordings(spec: str, options: SourceOptions, errors: list[FileProblem] | None,
                     records: list[str] | None = None) -> WindowSet:
    """`butppg:DIR` / `vitaldb:DIR` (local folder or s3:// prefix, mirrored into the cache first); with
    `records`, only those records (see record_units)."""
    from biosig.data import recordings
    from biosig.data.preprocess import PreprocessConfig

    kind, where = spec.split(":", 1)
    root = recording_root(spec)
    defaults = recordings.butppg_defaults() if kind == "butppg" else recordings.vitaldb_defaults()
    config = PreprocessConfig.from_yaml(options.preprocess) if options.preprocess else defaults
    problems: list[FileProblem] = []
    labels = Path(options.labels) if options.labels else None
    try:
        if kind == "butppg":
            return recordings.read_butppg(root, config, problems, missing_acc=options.missing_acc,
                                          ppg_colour=options.ppg_colour, labels_file=labels, source=spec,
                                          records=records)
        files = sorted(root.rglob("*.vital")) if records is None else [root / r for r in records]
        if not files:
            raise DataError(f"vitaldb source {spec}: no .vital files in {where}")
        return recordings.read_vital_files(files, config, problems, labels_file=labels, source=spec)
    finally:
        if errors is not None:
            errors.extend(problems)
        elif any(p.kind == "error" for p in problems):
            raise DataError(next(p.error for p in problems if p.kind == "error"))
