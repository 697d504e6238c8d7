"""Hand-made window features: the signal-quality indices and spectral shape a clinician's quality
score is built from. They feed the `features` reference model (scikit-learn), the yardstick every
fine-tuned model is compared with on the same test split.

Per channel (names `{CHANNEL}.{feature}`), on the raw window (before biosig's normalisation):

| feature       | what it measures                                                        |
|---------------|-------------------------------------------------------------------------|
| log_std       | log10 of the standard deviation (the amplitude scale)                   |
| log_ptp_std   | log of peak-to-peak over std (outliers, spikes)                          |
| skewness      | third standardised moment (clean PPG pulses are positively skewed)       |
| kurtosis      | excess kurtosis (impulsive noise, bursts)                                |
| max_diff_std  | largest sample-to-sample jump over std (steps, spikes)                   |
| flat_fraction | share of successive samples that do not change (flat lines, dropouts)    |
| clip_fraction | share of samples within 1 % of the window's minimum or maximum (clipping)|
| band.*        | relative Welch power in 0-0.5, 0.5-4, 4-8, 8-15 Hz and 15 Hz-Nyquist     |
| spectral_entropy | normalised entropy of the Welch spectrum (noise is flat, pulses peaky) |
| acf_peak      | highest autocorrelation at lags of 40-180 beats/min (rhythm regularity)  |
| seg_std_cv    | coefficient of variation of the std of 8 equal segments (local artefacts)|

All but log_std are scale-free, so subjects recorded in other units share one feature space.
"""

from __future__ import annotations

import numpy as np
from scipy.signal import welch
from scipy.stats import kurtosis, skew

BANDS_HZ = ((0.0, 0.5), (0.5, 4.0), (4.0, 8.0), (8.0, 15.0), (15.0, np.inf))
HEART_RATE_BPM = (40.0, 180.0)
SEGMENTS = 8
_EPS = 1e-12


def feature_names(channels: list[str]) -> list[str]:
    per_channel = ["log_std", "log_ptp_std", "skewness", "kurtosis", "max_diff_std", "flat_fraction",
                   "clip_fraction", *(f"band.{lo:g}-{hi:g}Hz" for lo, hi in BANDS_HZ), "spectral_entropy",
                   "acf_peak", "seg_std_cv"]
    return [f"{c}.{f}" for c in channels for f in per_channel]


def window_features(signals: np.ndarray, fs: float) -> np.ndarray:
    """[N, C, T] raw windows -> [N, C * 15] float64 features (see the module table; finite always)."""
    x = np.asarray(signals, dtype=np.float64)
    n, c, t = x.shape
    std = x.std(axis=-1)
    safe_std = np.maximum(std, _EPS)
    centred = x - x.mean(axis=-1, keepdims=True)
    ptp = np.ptp(x, axis=-1)
    diff = np.abs(np.diff(x, axis=-1))
    flat = (diff <= 1e-6 * np.maximum(ptp, _EPS)[..., None]).mean(axis=-1)
    low, high = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
    margin = 0.01 * (high - low)
    clip = ((x <= low + margin) | (x >= high - margin)).mean(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        moments = np.stack([skew(centred, axis=-1), kurtosis(centred, axis=-1)], axis=-1)
    columns = [
        np.log10(safe_std)[..., None],
        np.log(np.maximum(ptp / safe_std, 1.0))[..., None],
        moments,
        (diff.max(axis=-1) / safe_std)[..., None],
        flat[..., None],
        clip[..., None],
        _band_powers(x, fs),
        _acf_peak(centred, fs)[..., None],
        _segment_std_cv(x)[..., None],
    ]
    features = np.concatenate(columns, axis=-1).reshape(n, -1)
    return np.nan_to_num(features, nan=0.0, posinf=0.0, neginf=0.0)


def _band_powers(x: np.ndarray, fs: float) -> np.ndarray:
    """Relative power per band and the spectral entropy: [N, C, len(BANDS_HZ) + 1]."""
    freqs, psd = welch(x, fs=fs, nperseg=min(256, x.shape[-1]), axis=-1)
    total = np.maximum(psd.sum(axis=-1, keepdims=True), _EPS)
    rel = psd / total
    bands = [rel[..., (freqs >= lo) & (freqs < hi)].sum(axis=-1) for lo, hi in BANDS_HZ]
    entropy = -(rel * np.log(np.maximum(rel, _EPS))).sum(axis=-1) / np.log(psd.shape[-1])
    return np.stack([*bands, entropy], axis=-1)


def _acf_peak(centred: np.ndarray, fs: float) -> np.ndarray:
    """Highest normalised autocorrelation at lags of one heart beat (40-180 bpm)."""
    t = centred.shape[-1]
    spectrum = np.fft.rfft(centred, n=2 * t, axis=-1)
    acf = np.fft.irfft(spectrum * np.conj(spectrum), axis=-1)[..., :t]
    acf = acf / np.maximum(acf[..., :1], _EPS)
    lo = int(fs * 60.0 / HEART_RATE_BPM[1])
    hi = min(t - 1, int(fs * 60.0 / HEART_RATE_BPM[0]))
    if hi <= lo:
        return np.zeros(centred.shape[:-1])
    return acf[..., lo:hi + 1].max(axis=-1)


def _segment_std_cv(x: np.ndarray) -> np.ndarray:
    t = x.shape[-1] - x.shape[-1] % SEGMENTS
    seg_std = x[..., :t].reshape(*x.shape[:-1], SEGMENTS, -1).std(axis=-1)
    return seg_std.std(axis=-1) / np.maximum(seg_std.mean(axis=-1), _EPS)
