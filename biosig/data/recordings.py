"""Readers for real recording databases -> windowed WindowSets (through biosig.data.preprocess).

BUT PPG (PhysioNet butppg 2.0.0): one folder per 6-digit record id (first 3 digits = subject) holding
`<id>_PPG` (smartphone PPG, 3 colour channels, 30 Hz), `<id>_ECG` (1000 Hz) and, for later records,
`<id>_ACC` (3 axes) as WFDB `.hea`/`.dat` pairs; `quality-hr-ann.csv` (ID, Quality, HR) at the root. Output:
ACC_X, ACC_Y, ACC_Z, PPG, ECG at 125 Hz with the quality label. Records without ACC are excluded or, with
`missing_acc=zero`, zero-filled with the per-window column `acc_present` = 0 as their mask.

VitalDB (`.vital` files, read with the `vitaldb` package): `SNUADC/PLETH` (PPG) and `SNUADC/ECG_II` (ECG) at
500 Hz -> 125 Hz, 1024-sample windows, case id (file stem) as subject, unlabelled unless a labels CSV
(`case,label`) is given.

A record that cannot be read (missing file, malformed header, unequal lengths) is skipped and returned as
a FileProblem; windows rejected by the quality gates are counted per reason (FileProblem kind `rejected`).
"""

from __future__ import annotations

import collections
import re
from pathlib import Path

import numpy as np
import pandas as pd

from biosig.data.channels import PPG_ECG_CHANNELS, QUALITY_CHANNELS
from biosig.data.preprocess import Gates, PreprocessConfig, prepare_channels, window_recording
from biosig.data.synthetic import QUALITY_CLASSES
from biosig.data.windowset import WindowSet
from biosig.errors import DataError, FileProblem

BUTPPG_LABELS = "quality-hr-ann.csv"
VITAL_TRACKS = {"PPG": "SNUADC/PLETH", "ECG": "SNUADC/ECG_II"}
_RECORD_ID = re.compile(r"^\d{6}$")


def butppg_defaults() -> PreprocessConfig:
    """10 s windows at 125 Hz (1250 samples), no gates: the labels describe quality, gating would drop
    the poor windows the classifier must learn."""
    return PreprocessConfig(target_fs=125.0, window_s=10.0, gates=Gates(enabled=False))


def vitaldb_defaults() -> PreprocessConfig:
    return PreprocessConfig(target_fs=125.0, window_s=1024 / 125)


def read_butppg(root: Path, config: PreprocessConfig, problems: list[FileProblem], *, missing_acc: str = "exclude",
                ppg_colour: int = 0, labels_file: Path | None = None, source: str = "",
                records: list[str] | None = None) -> WindowSet:
    """The windows of every record folder under `root` (or of the folders named in `records`)."""
    if missing_acc not in ("exclude", "zero"):
        raise DataError(f"missing_acc must be exclude or zero, got {missing_acc!r}")
    labels_file = labels_file or root / BUTPPG_LABELS
    if not labels_file.is_file():
        raise DataError(f"BUT PPG: no labels file {labels_file} (ID,Quality,HR)")
    table = pd.read_csv(labels_file, dtype={"ID": str})
    if not {"ID", "Quality"} <= set(table.columns):
        raise DataError(f"{labels_file}: needs the columns ID and Quality, has {list(table.columns)}")
    quality = {str(i).zfill(6): int(q) for i, q in zip(table.ID, table.Quality)}
    folders = butppg_records(root) if records is None else [root / r for r in records]
    if not folders:
        raise DataError(f"BUT PPG: no record folders (6-digit ids) in {root}")
    parts, missing_label = [], []
    for folder in folders:
        rid = folder.name
        try:
            signals, has_acc = _butppg_signals(folder, ppg_colour)
            if not has_acc and missing_acc == "exclude":
                problems.append(FileProblem(str(folder), "no ACC record: excluded (missing_acc=exclude)", "warning"))
                continue
            channels, x = prepare_channels(signals, config, str(folder))
        except DataError as exc:
            problems.append(FileProblem(str(folder), str(exc)))
            continue
        if not has_acc:
            x = np.concatenate([np.zeros((3, x.shape[1])), x])
            channels = ["ACC_X", "ACC_Y", "ACC_Z", *channels]
            problems.append(FileProblem(str(folder), "no ACC record: zero-filled, acc_present=0", "warning"))
        windows = window_recording(channels, x, config, order=QUALITY_CHANNELS)
        _count_rejections(problems, str(folder), windows.rejected)
        if rid not in quality:
            missing_label.append(rid)
        n = len(windows.signals)
        parts.append((rid, windows, quality.get(rid, -1), float(has_acc), n))
    if missing_label:
        problems.append(FileProblem(str(labels_file), f"no Quality for record(s) {missing_label[:10]}"
                                  f"{' …' if len(missing_label) > 10 else ''}: their windows are unlabelled (-1)",
                                  "warning"))
    parts = [p for p in parts if p[4]]
    if not parts:
        raise DataError(f"BUT PPG {root}: no window survived ({len(folders)} records; see data_errors.csv)")
    return WindowSet(
        signals=np.concatenate([w.signals for _, w, _, _, _ in parts]),
        labels=np.concatenate([np.full(n, q, dtype=np.int64) for _, _, q, _, n in parts]),
        subject=np.concatenate([np.full(n, rid[:3]) for rid, _, _, _, n in parts]),
        order=np.concatenate([np.column_stack([np.full(n, int(rid)), np.arange(n)]) for rid, _, _, _, n in parts]),
        channels=QUALITY_CHANNELS, fs=config.target_fs, order_names=["record_id", "window_id"],
        meta={"window_start": np.concatenate([w.starts for _, w, _, _, _ in parts]),
              "window_end": np.concatenate([w.starts for _, w, _, _, _ in parts]) + config.window_s,
              "acc_present": np.concatenate([np.full(n, acc) for _, _, _, acc, n in parts])},
        modality="PPG", subject_name="subject", label_name="quality", class_names=QUALITY_CLASSES,
        source=source or str(root),
    ).sorted()


def butppg_records(root: Path) -> list[Path]:
    """The record folders (6-digit ids) of a BUT PPG root, sorted."""
    return sorted(p for p in root.iterdir() if p.is_dir() and _RECORD_ID.match(p.name))


def _butppg_signals(folder: Path, ppg_colour: int) -> tuple[dict[str, tuple[np.ndarray, float]], bool]:
    rid = folder.name
    ppg = _wfdb(folder / f"{rid}_PPG")
    ecg = _wfdb(folder / f"{rid}_ECG")
    if ppg_colour >= ppg.p_signal.shape[1]:
        raise DataError(f"{folder}/{rid}_PPG.hea has {ppg.p_signal.shape[1]} channel(s); ppg_colour={ppg_colour}")
    signals = {"PPG": (ppg.p_signal[:, ppg_colour], float(ppg.fs)), "ECG": (ecg.p_signal[:, 0], float(ecg.fs))}
    has_acc = (folder / f"{rid}_ACC.hea").is_file()
    if has_acc:
        acc = _wfdb(folder / f"{rid}_ACC")
        if acc.p_signal.shape[1] < 3:
            raise DataError(f"{folder}/{rid}_ACC.hea has {acc.p_signal.shape[1]} channel(s), expected 3 axes")
        signals.update({axis: (acc.p_signal[:, i], float(acc.fs)) for i, axis in enumerate(("ACC_X", "ACC_Y", "ACC_Z"))})
    return signals, has_acc


def _wfdb(record: Path):
    import wfdb

    if not record.with_suffix(".hea").is_file():
        raise DataError(f"missing file {record}.hea")
    try:
        rec = wfdb.rdrecord(str(record))
    except Exception as exc:
        raise DataError(f"cannot read WFDB record {record}: {type(exc).__name__}: {exc}") from None
    if rec.p_signal is None or not rec.fs or rec.fs <= 0:
        raise DataError(f"WFDB record {record}: no physical signal or sampling rate {rec.fs!r} in the header")
    if not np.isfinite(rec.p_signal).any():
        raise DataError(f"WFDB record {record}: all samples are NaN")
    return rec


def read_vital_files(files: list[Path], config: PreprocessConfig, problems: list[FileProblem], *,
                     labels_file: Path | None = None, source: str = "") -> WindowSet:
    labels = _case_labels(labels_file) if labels_file else {}
    parts = []
    for path in files:
        case = path.stem
        try:
            signals = _vital_signals(path)
            channels, x = prepare_channels(signals, config, str(path))
        except DataError as exc:
            problems.append(FileProblem(str(path), str(exc)))
            continue
        windows = window_recording(channels, x, config, order=PPG_ECG_CHANNELS)
        _count_rejections(problems, str(path), windows.rejected)
        if len(windows.signals):
            parts.append((case, windows, labels.get(case, -1)))
    if labels_file:
        missing = sorted({c for c, _, _ in parts} - set(labels))
        if missing:
            problems.append(FileProblem(str(labels_file), f"no label for case(s) {missing[:10]}: unlabelled (-1)",
                                      "warning"))
    if not parts:
        raise DataError(f"VitalDB {source}: no window survived ({len(files)} files; see data_errors.csv)")
    return WindowSet(
        signals=np.concatenate([w.signals for _, w, _ in parts]),
        labels=np.concatenate([np.full(len(w.signals), y, dtype=np.int64) for _, w, y in parts]),
        subject=np.concatenate([np.full(len(w.signals), c) for c, w, _ in parts]),
        order=np.concatenate([np.arange(len(w.signals)) for _, w, _ in parts])[:, None],
        channels=PPG_ECG_CHANNELS, fs=config.target_fs, order_names=["window_id"],
        meta={"window_start": np.concatenate([w.starts for _, w, _ in parts]),
              "window_end": np.concatenate([w.starts for _, w, _ in parts]) + config.window_s},
        modality="PPG", subject_name="case", label_name="label", source=source,
    ).sorted()


def _vital_signals(path: Path, fs: float = 500.0) -> dict[str, tuple[np.ndarray, float]]:
    import vitaldb

    try:
        vf = vitaldb.VitalFile(str(path), list(VITAL_TRACKS.values()))
        names = set(vf.get_track_names())
    except Exception as exc:
        raise DataError(f"cannot read {path} as a .vital file: {type(exc).__name__}: {exc}") from None
    missing = [t for t in VITAL_TRACKS.values() if t not in names]
    if missing:
        raise DataError(f"{path}: track(s) {missing} not found (tracks: {sorted(names)[:8]})")
    values = vf.to_numpy(list(VITAL_TRACKS.values()), 1 / fs)
    finite = np.isfinite(values).all(axis=1)
    if not finite.any():
        raise DataError(f"{path}: no sample where both PPG and ECG are recorded")
    first, last = np.flatnonzero(finite)[[0, -1]]
    values = values[first:last + 1]
    values = pd.DataFrame(values).interpolate(limit=int(0.1 * fs), limit_area="inside").to_numpy()
    if not np.isfinite(values).all():  # longer dropouts: zero-filled, then refused as flat by the gates
        values = np.nan_to_num(values)
    return {c: (values[:, i], fs) for i, c in enumerate(VITAL_TRACKS)}


def _case_labels(path: Path) -> dict[str, int]:
    table = pd.read_csv(path, dtype=str)
    if not {"case", "label"} <= set(table.columns):
        raise DataError(f"labels file {path} needs the columns case,label; has {list(table.columns)}")
    return {c: int(v) for c, v in zip(table.case, table.label)}


def _count_rejections(problems: list[FileProblem], file: str, rejected: collections.Counter) -> None:
    problems.extend(FileProblem(file, reason, "rejected", n) for reason, n in rejected.items())
