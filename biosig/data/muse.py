"""Muse headband CSV exports -> the EEG primary WindowSet.

One CSV per recording, holding a timestamp column and the four Muse electrodes at 256 Hz. Both common
exporters are read: muse-lsl (`timestamps` in Unix seconds, columns `TP9, AF7, AF8, TP10`) and Mind
Monitor (`TimeStamp` as date-time text, columns `RAW_TP9, ...`, with rows of other data whose EEG
cells are empty). Rows with a missing (NaN) EEG value are dropped; a jump in the timestamps longer than
1.5 sample periods is a gap, and no window spans a gap. Both are counted per file and returned as
warnings, so the dataset run reports them (dataset/data_errors.csv, kind=warning).

Windows: consecutive `window_s` sub-windows of each gap-free segment, grouped `subs_per_parent` at a
time into parent windows: (Participant, parent_window_id, sub_window_id) orders them in time.
Labels come from a participants CSV (`Participant,Remission`, default `participants.csv` beside the
recordings); the participant of a file is its `file` column there, else the file name's stem.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from biosig.data.channels import MUSE_CHANNELS
from biosig.data.synthetic import REMISSION_CLASSES
from biosig.data.windowset import WindowSet
from biosig.errors import DataError

MUSE_FS = 256.0
PARTICIPANTS_FILE = "participants.csv"
_TIME_COLUMNS = ("timestamps", "TimeStamp", "timestamp", "time")


@dataclasses.dataclass
class Recording:
    """One file's gap-free segments (each [4, n] float32) with their start times in seconds."""

    participant: str
    segments: list[np.ndarray]
    starts: list[float]
    warnings: list[str]


def read_muse_csv(path: Path, fs: float = MUSE_FS, participant: str | None = None) -> Recording:
    """Parse one export; DataError names the file for missing columns or unreadable timestamps."""
    try:
        table = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise DataError(f"{path}: not a readable CSV ({exc})") from None
    time_column = next((c for c in _TIME_COLUMNS if c in table.columns), None)
    if time_column is None:
        raise DataError(f"{path}: no timestamp column (expected one of {', '.join(_TIME_COLUMNS)}); "
                        f"columns are {list(table.columns)[:8]}")
    columns = [_channel_column(table, path, channel) for channel in MUSE_CHANNELS]
    seconds = _seconds(table[time_column], path)
    values = table[columns].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    finite = np.isfinite(values).all(axis=1) & np.isfinite(seconds)
    warnings = []
    if (~finite).any():
        warnings.append(f"dropped {(~finite).sum()} of {len(finite)} rows with a missing EEG value or timestamp")
    values, seconds = values[finite], seconds[finite]
    if len(seconds) == 0:
        raise DataError(f"{path}: no rows with all of {MUSE_CHANNELS}")
    order = np.argsort(seconds, kind="stable")
    values, seconds = values[order], seconds[order]
    breaks = np.flatnonzero(np.diff(seconds) > 1.5 / fs) + 1
    if len(breaks):
        lost = float(np.sum(np.diff(seconds)[breaks - 1] - 1 / fs))
        warnings.append(f"{len(breaks)} gap(s) in the timestamps ({lost:.1f} s missing): windows do not span them")
    bounds = [0, *breaks.tolist(), len(seconds)]
    segments = [values[a:b].T.astype(np.float32) for a, b in zip(bounds[:-1], bounds[1:])]
    starts = [float(seconds[a] - seconds[0]) for a in bounds[:-1]]
    return Recording(participant or path.stem, segments, starts, warnings)


def _channel_column(table: pd.DataFrame, path: Path, channel: str) -> str:
    for name in (channel, f"RAW_{channel}"):
        if name in table.columns:
            return name
    raise DataError(f"{path}: no column for channel {channel} (expected {channel} or RAW_{channel}); "
                    f"columns are {list(table.columns)[:12]}")


def _seconds(column: pd.Series, path: Path) -> np.ndarray:
    numeric = pd.to_numeric(column, errors="coerce")
    if numeric.notna().mean() > 0.5:
        return numeric.to_numpy(np.float64)
    parsed = pd.to_datetime(column, errors="coerce")
    if parsed.notna().sum() == 0:
        raise DataError(f"{path}: timestamps are neither numbers nor date-times (first: {column.iloc[0]!r})")
    return (parsed - parsed.min()).dt.total_seconds().to_numpy(np.float64)


def window_recordings(recordings: list[Recording], labels: dict[str, int], *, fs: float, window_s: float,
                      subs_per_parent: int, source: str) -> WindowSet:
    """Cut segments into sub-windows, group them into parents; labels by participant (-1: unknown)."""
    n_samples = int(round(window_s * fs))
    signals, subject, order, start_s = [], [], [], []
    parent_offset: dict[str, int] = {}
    for rec in recordings:
        parent = parent_offset.get(rec.participant, 0)
        for segment, start in zip(rec.segments, rec.starts):
            n = segment.shape[1] // n_samples
            if n == 0:
                continue
            windows = segment[:, :n * n_samples].reshape(4, n, n_samples).transpose(1, 0, 2)
            signals.append(windows)
            subject += [rec.participant] * n
            index = np.arange(n)
            order.append(np.column_stack([parent + index // subs_per_parent, index % subs_per_parent]))
            start_s.append(start + index * window_s)
            parent += -(-n // subs_per_parent)
        parent_offset[rec.participant] = parent
    if not signals:
        raise DataError(f"{source}: no recording holds a gap-free stretch of {window_s:g} s "
                        f"({n_samples} samples at {fs:g} Hz)")
    subject_arr = np.array(subject)
    starts = np.concatenate(start_s)
    return WindowSet(
        signals=np.concatenate(signals), labels=np.array([labels.get(s, -1) for s in subject], dtype=np.int64),
        subject=subject_arr, order=np.concatenate(order).astype(np.int64), channels=MUSE_CHANNELS, fs=fs,
        order_names=["parent_window_id", "sub_window_id"],
        meta={"window_start": starts, "window_end": starts + window_s}, modality="EEG",
        subject_name="Participant", label_name="Remission", class_names=REMISSION_CLASSES, source=source,
    ).sorted()


def read_participants(path: Path) -> tuple[dict[str, int], dict[str, str]]:
    """participants CSV -> ({participant: label}, {file stem: participant})."""
    table = pd.read_csv(path, dtype=str)
    for column in ("Participant", "Remission"):
        if column not in table.columns:
            raise DataError(f"{path}: missing column {column!r} (columns: {list(table.columns)})")
    labels = {}
    for participant, value in zip(table.Participant, table.Remission):
        try:
            labels[participant] = int(value)
        except (TypeError, ValueError):
            raise DataError(f"{path}: Remission of participant {participant!r} must be 0 or 1, got {value!r}") \
                from None
    files = {Path(f).stem: p for f, p in zip(table["file"], table.Participant) if isinstance(f, str) and f} \
        if "file" in table else {}
    return labels, files
