"""Turn a `source` spec into a WindowSet.

Specs: `synthetic:ppg-ecg` (2 ch, 1024 samples at 125 Hz), `synthetic:quality` (ACC_X/Y/Z, PPG, ECG,
10 s at 125 Hz), `synthetic:eeg` (Muse AF7/AF8/TP9/TP10, 8 s at 256 Hz), or a local `.parquet` /
`.npz` path, local or `s3://bucket/key` (downloaded once into the content-addressed cache).
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


def load_source(spec: str, options: SourceOptions | None = None) -> WindowSet:
    options = options or SourceOptions()
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
