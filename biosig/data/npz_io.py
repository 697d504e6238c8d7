"""Read windowed datasets saved by other tools as .npz: `signals [N,C,T]`, `labels [N]`,
optional `subjects [N]`, `channels [C]` and `fs`."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from biosig.data.channels import single_rate
from biosig.data.paths import require_input_file
from biosig.data.windowset import WindowSet
from biosig.errors import DataError


def read_npz(path: str | Path, *, channels: list[str] | None = None, fs: float | None = None) -> WindowSet:
    """Channels and fs come from the file when stored there, else from the arguments."""
    path = require_input_file(path, ".npz", "a .npz file")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError):
        # numpy's own message for a non-npz file is a hint about allow_pickle, which must stay off
        raise DataError(f"cannot read {path}: not a NumPy .npz archive (np.savez) or it is damaged") from None
    with archive:
        keys = set(archive.files)
        for required in ("signals", "labels"):
            if required not in keys:
                raise DataError(f"{path} lacks the array '{required}' (has {sorted(keys)})")
        signals = archive["signals"]
        labels = archive["labels"]
        subjects = archive["subjects"] if "subjects" in keys else None
        if "channels" in keys:
            channels = [str(c) for c in archive["channels"].tolist()]
        if "fs" in keys:
            fs = single_rate(archive["fs"], str(path))
    where = str(path)
    if channels is None:
        raise DataError(f"{where} stores no 'channels' array: pass channels (e.g. --channels PPG,ECG)")
    if fs is None:
        raise DataError(f"{where} stores no 'fs' value: pass fs (e.g. --fs 125)")
    if signals.ndim != 3:
        raise DataError(f"'signals' in {where} must be [N, C, T], got shape {signals.shape}")
    if signals.dtype.kind != "f":
        raise DataError(f"'signals' in {where} must be floating point, got {signals.dtype}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"'labels' in {where} must be integers, got {labels.dtype}")
    n = signals.shape[0]
    if subjects is None:
        subjects = np.full(n, path.stem)
    subjects = np.asarray(subjects).astype(str)
    if subjects.shape != (n,) or labels.shape != (n,):
        raise DataError(f"{where}: labels {labels.shape} and subjects {subjects.shape} must have one entry per window ({n})")
    # Keep each subject's windows in file order.
    order = np.zeros((n, 1), np.int64)
    for s in np.unique(subjects):
        idx = np.flatnonzero(subjects == s)
        order[idx, 0] = np.arange(idx.size)
    return WindowSet(
        signals=signals.astype(np.float32, copy=False),
        labels=labels.astype(np.int64),
        subject=subjects,
        order=order,
        channels=channels,
        fs=fs,
        source=where,
    )
