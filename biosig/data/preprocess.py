"""Preprocessing of real recordings into windows: polyphase resampling, Butterworth band-pass filters
per channel, windowing with overlap, and per-window gates: flat line, clipping, ECG template-correlation
SQI, PPG skewness SQI and a minimum number of cardiac cycles. A rejected window is counted under its
first failing reason (`flat_line:PPG`, `ecg_template_sqi`, …) so a dataset run can report why data was lost.

Configured in YAML (`PreprocessConfig.from_yaml`):

    target_fs: 125
    window_s: 10
    overlap: 0.0                 # fraction of a window shared with the next one, [0, 1)
    channels:                    # per-channel band-pass [low, high] Hz and filter order; others unfiltered
      PPG: {bandpass: [0.5, 8.0], order: 4}
      ECG: {bandpass: [0.5, 40.0]}
    gates:
      enabled: true              # false for labelled quality data (BUT PPG's default)
      flat_s: 1.0                # reject a PPG/ECG run of unchanged samples this long
      clip_fraction: 0.1         # reject when this share of PPG/ECG samples sits at the window's extremes
      ecg_template_sqi: 0.5      # min mean correlation of ECG beats with their template (0 disables)
      ppg_skewness: 0.0          # min skewness of the filtered PPG (null disables)
      min_cycles: 3              # min detected beats (ECG R peaks, else PPG peaks)
"""

from __future__ import annotations

import collections
import dataclasses
from fractions import Fraction
from pathlib import Path

import numpy as np
from scipy.signal import butter, find_peaks, resample_poly, sosfiltfilt
from scipy.stats import skew

from biosig.errors import ConfigError, DataError

DEFAULT_BANDPASS = {"PPG": (0.5, 8.0), "ECG": (0.5, 40.0)}
GATED_CHANNELS = ("PPG", "ECG")  # accelerometers may legitimately be flat (a still wrist)


@dataclasses.dataclass
class Gates:
    enabled: bool = True  # off for labelled quality datasets: the gates would remove the poor class
    flat_s: float = 1.0
    clip_fraction: float = 0.1
    ecg_template_sqi: float = 0.5
    ppg_skewness: float | None = 0.0
    min_cycles: int = 3


@dataclasses.dataclass
class PreprocessConfig:
    target_fs: float = 125.0
    window_s: float = 10.0
    overlap: float = 0.0
    bandpass: dict[str, tuple[float, float]] = dataclasses.field(default_factory=lambda: dict(DEFAULT_BANDPASS))
    filter_order: dict[str, int] = dataclasses.field(default_factory=dict)
    gates: Gates = dataclasses.field(default_factory=Gates)

    def __post_init__(self) -> None:
        if self.target_fs <= 0 or self.window_s <= 0:
            raise ConfigError(f"preprocessing: target_fs and window_s must be positive, got {self.target_fs}, "
                              f"{self.window_s}")
        if not 0 <= self.overlap < 1:
            raise ConfigError(f"preprocessing: overlap must be in [0, 1), got {self.overlap}")
        for channel, (low, high) in self.bandpass.items():
            if not 0 < low < high < self.target_fs / 2:
                raise ConfigError(f"preprocessing: band-pass of {channel} must satisfy 0 < low < high < "
                                  f"target_fs/2 = {self.target_fs / 2:g} Hz, got [{low}, {high}]")

    @property
    def window_samples(self) -> int:
        return int(round(self.window_s * self.target_fs))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PreprocessConfig":
        from biosig.files import read_yaml_mapping

        data = read_yaml_mapping(Path(path), "preprocessing file")
        unknown = set(data) - {"target_fs", "window_s", "overlap", "channels", "gates"}
        if unknown:
            raise ConfigError(f"preprocessing file {path}: unknown key(s) {sorted(unknown)}; known: target_fs, "
                              "window_s, overlap, channels, gates")
        bandpass, order = dict(DEFAULT_BANDPASS), {}
        for channel, steps in (data.get("channels") or {}).items():
            steps = steps or {}
            if set(steps) - {"bandpass", "order"}:
                raise ConfigError(f"preprocessing file {path}: channels.{channel} takes bandpass and order, got "
                                  f"{sorted(steps)}")
            band = steps.get("bandpass")
            if band is None:
                bandpass.pop(channel, None)
            elif not (isinstance(band, list) and len(band) == 2):
                raise ConfigError(f"preprocessing file {path}: channels.{channel}.bandpass must be [low, high] Hz")
            else:
                bandpass[channel] = (float(band[0]), float(band[1]))
            if "order" in steps:
                order[channel] = int(steps["order"])
        gate_values = data.get("gates") or {}
        unknown = set(gate_values) - {f.name for f in dataclasses.fields(Gates)}
        if unknown:
            raise ConfigError(f"preprocessing file {path}: unknown gate(s) {sorted(unknown)}; known: "
                              f"{', '.join(f.name for f in dataclasses.fields(Gates))}")
        try:
            return cls(target_fs=float(data.get("target_fs", 125.0)), window_s=float(data.get("window_s", 10.0)),
                       overlap=float(data.get("overlap", 0.0)), bandpass=bandpass, filter_order=order,
                       gates=Gates(**gate_values))
        except ConfigError as exc:
            raise ConfigError(f"preprocessing file {path}: {exc}") from None


def resample(x: np.ndarray, fs: float, target_fs: float) -> np.ndarray:
    """Polyphase (anti-aliased) resampling along the last axis."""
    if abs(fs - target_fs) < 1e-9:
        return x.astype(np.float64, copy=False)
    ratio = Fraction(target_fs / fs).limit_denominator(1000)
    return resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)


def bandpass(x: np.ndarray, fs: float, low: float, high: float, order: int = 4) -> np.ndarray:
    """Zero-phase Butterworth band-pass (second-order sections, forward and backward)."""
    sos = butter(order, [low, high], btype="band", fs=fs, output="sos")
    return sosfiltfilt(sos, x, axis=-1)


def longest_flat_run(x: np.ndarray) -> int:
    """Samples in the longest run of (numerically) unchanged values."""
    tolerance = 1e-6 * max(float(np.ptp(x)), 1e-12)
    still = np.abs(np.diff(x)) <= tolerance
    if not still.any():
        return 1
    edges = np.diff(np.concatenate([[0], still.astype(np.int8), [0]]))
    return int((np.flatnonzero(edges == -1) - np.flatnonzero(edges == 1)).max()) + 1


def clipped_fraction(x: np.ndarray) -> float:
    """Share of samples at the window's maximum or minimum (within 0.1 % of the range)."""
    low, high = float(x.min()), float(x.max())
    tolerance = 1e-3 * max(high - low, 1e-12)
    return float(np.mean((x >= high - tolerance) | (x <= low + tolerance)))


def beats(x: np.ndarray, fs: float, min_interval_s: float = 0.33) -> np.ndarray:
    """Peak indices of a (filtered) cardiac signal: at most 180 beats/min, prominent against the spread."""
    spread = float(np.percentile(x, 99) - np.percentile(x, 1))
    if spread <= 0:
        return np.array([], dtype=int)
    peaks, _ = find_peaks(x, distance=max(1, int(min_interval_s * fs)), prominence=0.35 * spread)
    return peaks


def ecg_template_sqi(ecg: np.ndarray, fs: float) -> float:
    """Mean correlation of each beat (R peak ± 0.2 s) with the window's average beat: ~1 for a clean
    ECG, low for noise or artefacts. 0 when fewer than 3 beats are found."""
    half = int(0.2 * fs)
    peaks = [p for p in beats(ecg, fs) if half <= p < len(ecg) - half]
    if len(peaks) < 3:
        return 0.0
    segments = np.stack([ecg[p - half:p + half] for p in peaks])
    centred = segments - segments.mean(axis=1, keepdims=True)
    template = centred.mean(axis=0)
    # Pearson correlation of every beat with the template, elementwise (tiny BLAS calls per beat were
    # slower than the whole filter chain with several threads).
    norms = np.sqrt((centred ** 2).sum(axis=1) * (template ** 2).sum())
    corr = (centred * template).sum(axis=1) / np.where(norms > 0, norms, np.inf)
    return float(corr.mean())


def ppg_skewness(ppg: np.ndarray) -> float:
    """Skewness SQI: clean PPG pulses are asymmetric (positive skew after filtering)."""
    return float(skew(ppg)) if np.ptp(ppg) > 0 else 0.0


def prepare_channels(signals: dict[str, tuple[np.ndarray, float]], config: PreprocessConfig,
                     where: str) -> tuple[list[str], np.ndarray]:
    """Resample every channel to target_fs, band-pass where configured; unequal durations are an error
    naming the channels."""
    out = {}
    for channel, (x, fs) in signals.items():
        if fs <= 0:
            raise DataError(f"{where}: channel {channel} has sampling rate {fs} Hz in its header")
        y = resample(np.asarray(x, dtype=np.float64), fs, config.target_fs)
        if channel in config.bandpass:
            low, high = config.bandpass[channel]
            y = bandpass(y, config.target_fs, low, high, config.filter_order.get(channel, 4))
        out[channel] = y
    lengths = {c: len(v) for c, v in out.items()}
    if max(lengths.values()) - min(lengths.values()) > max(2, 0.01 * max(lengths.values())):
        durations = ", ".join(f"{c} {n / config.target_fs:.2f} s" for c, n in lengths.items())
        raise DataError(f"{where}: channels have unequal lengths ({durations})")
    n = min(lengths.values())
    return list(out), np.stack([out[c][:n] for c in out])


def gate(window: np.ndarray, channels: list[str], fs: float, gates: Gates) -> str | None:
    """The first reason to reject `window` [C, T], or None to keep it."""
    if not gates.enabled:
        return None
    for i, channel in enumerate(channels):
        if channel not in GATED_CHANNELS:
            continue
        if longest_flat_run(window[i]) >= gates.flat_s * fs:
            return f"flat_line:{channel}"
        if clipped_fraction(window[i]) >= gates.clip_fraction:
            return f"clipping:{channel}"
    index = {c: i for i, c in enumerate(channels)}
    if "ECG" in index and gates.ecg_template_sqi > 0 and ecg_template_sqi(window[index["ECG"]], fs) < gates.ecg_template_sqi:
        return "ecg_template_sqi"
    if "PPG" in index and gates.ppg_skewness is not None and ppg_skewness(window[index["PPG"]]) < gates.ppg_skewness:
        return "ppg_skewness"
    cardiac = "ECG" if "ECG" in index else "PPG" if "PPG" in index else None
    if cardiac and gates.min_cycles and len(beats(window[index[cardiac]], fs)) < gates.min_cycles:
        return "too_few_cycles"
    return None


@dataclasses.dataclass
class Windows:
    """Accepted windows of one recording and the rejection counts."""

    signals: np.ndarray  # [W, C, T] float32
    starts: np.ndarray  # window start in seconds from the recording start
    rejected: collections.Counter

    @property
    def total(self) -> int:
        return len(self.signals) + sum(self.rejected.values())


def window_recording(channels: list[str], x: np.ndarray, config: PreprocessConfig,
                     order: list[str] | None = None) -> Windows:
    """Cut [C, n] (already at target_fs) into overlapping windows and gate each one; `order` selects and
    orders the output channels (e.g. ACC_X, ACC_Y, ACC_Z, PPG, ECG)."""
    size = config.window_samples
    step = max(1, int(round(size * (1 - config.overlap))))
    starts = np.arange(0, x.shape[1] - size + 1, step)
    index = [channels.index(c) for c in (order or channels)]
    kept, kept_starts, rejected = [], [], collections.Counter()
    for start in starts:
        window = x[:, start:start + size]
        reason = gate(window, channels, config.target_fs, config.gates)
        if reason:
            rejected[reason] += 1
            continue
        kept.append(window[index])
        kept_starts.append(start / config.target_fs)
    if len(starts) == 0:
        rejected["shorter_than_a_window"] += 1
    signals = np.stack(kept).astype(np.float32) if kept else np.empty((0, len(index), size), np.float32)
    return Windows(signals, np.asarray(kept_starts, dtype=np.float64), rejected)
