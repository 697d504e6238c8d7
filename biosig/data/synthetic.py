"""Deterministic synthetic datasets that exercise the whole pipeline without real recordings.

* cardio: PPG/ECG (optionally ACC_X/Y/Z) at 125 Hz with a binary signal-quality label
  (1 = good, 0 = poor). Poor windows carry motion artefacts, clipping, baseline wander,
  flat lines or noise bursts; good windows may carry the same artefacts mildly, so the
  severity ranges overlap and a small fraction of labels is flipped: learnable, not trivial.
* eeg: Muse montage (AF7, AF8, TP9, TP10) at 256 Hz, one continuous recording per participant
  cut into parent windows of consecutive sub-windows, with a participant-level remission label
  that shifts alpha power and frontal alpha asymmetry by less than the between-participant spread.
"""

from __future__ import annotations

import numpy as np

from biosig.data.channels import MUSE_CHANNELS, PPG_ECG_CHANNELS, QUALITY_CHANNELS
from biosig.data.windowset import WindowSet
from biosig.errors import ConfigError

QUALITY_CLASSES = ["poor", "good"]
REMISSION_CLASSES = ["no_remission", "remission"]
ARTEFACTS = ("motion", "clipping", "wander", "flat", "burst")


def _subject_ids(prefix: str, n: int) -> np.ndarray:
    return np.array([f"{prefix}{i:03d}" for i in range(n)])


def synthetic_cardio(
    *,
    n_subjects: int = 24,
    windows_per_subject: int = 20,
    with_acc: bool = False,
    fs: float = 125.0,
    window_s: float = 1024 / 125,
    good_fraction: float = 0.24,
    label_noise: float = 0.03,
    seed: int = 0,
) -> WindowSet:
    if n_subjects < 1 or windows_per_subject < 1:
        raise ConfigError("n_subjects and windows_per_subject must be >= 1")
    rng = np.random.default_rng(seed)
    t_len = int(round(window_s * fs))
    n = n_subjects * windows_per_subject
    subj = np.repeat(np.arange(n_subjects), windows_per_subject)
    t = np.arange(t_len) / fs

    # Per-subject physiology.
    hr = rng.uniform(55, 95, n_subjects)[subj] + rng.normal(0, 3, n)
    ppg_amp = rng.uniform(0.5, 1.5, n_subjects)[subj]
    ecg_amp = rng.uniform(0.8, 1.5, n_subjects)[subj]
    transit = rng.uniform(0.15, 0.3, n_subjects)[subj]
    phase0 = rng.uniform(0, 1, n)
    phase = phase0[:, None] + (hr / 60)[:, None] * t[None, :] + 0.02 * np.sin(
        2 * np.pi * 0.25 * t[None, :] + rng.uniform(0, 2 * np.pi, n)[:, None])
    u = np.mod(phase, 1.0)

    def bump(x: np.ndarray, mu: float, sigma: float) -> np.ndarray:
        return np.exp(-0.5 * ((x - mu) / sigma) ** 2)

    ecg = (0.15 * bump(u, 0.15, 0.025) - 0.1 * bump(u, 0.27, 0.008) + bump(u, 0.30, 0.010)
           - 0.2 * bump(u, 0.33, 0.010) + 0.3 * bump(u, 0.55, 0.05)) * ecg_amp[:, None]
    u2 = np.mod(u - transit[:, None], 1.0)
    resp = 1 + 0.1 * np.sin(2 * np.pi * 0.25 * t[None, :] + rng.uniform(0, 2 * np.pi, n)[:, None])
    ppg = (bump(u2, 0.2, 0.08) + 0.4 * bump(u2, 0.45, 0.09)) * ppg_amp[:, None] * resp
    ppg += rng.normal(0, 0.02, ppg.shape)
    ecg += rng.normal(0, 0.02, ecg.shape)

    gravity = rng.normal(size=(n_subjects, 3))
    gravity /= np.linalg.norm(gravity, axis=1, keepdims=True)
    acc = gravity[subj][:, :, None] + rng.normal(0, 0.01, (n, 3, t_len))

    labels = (rng.uniform(size=n) < good_fraction).astype(np.int64)
    severity = np.where(labels == 1, rng.uniform(0.0, 0.3, n), rng.uniform(0.25, 1.0, n))
    for i in range(n):
        kinds = _artefact_kinds(rng, labels[i])
        for kind in kinds:
            _apply_artefact(kind, severity[i], rng, t, ppg[i], ecg[i], acc[i], ppg_amp[i], fs)

    flip = rng.uniform(size=n) < label_noise
    labels = np.where(flip, 1 - labels, labels)

    parts = {"PPG": ppg, "ECG": ecg, "ACC_X": acc[:, 0], "ACC_Y": acc[:, 1], "ACC_Z": acc[:, 2]}
    channels = QUALITY_CHANNELS if with_acc else PPG_ECG_CHANNELS
    signals = np.stack([parts[c] for c in channels], axis=1).astype(np.float32)
    order = np.tile(np.arange(windows_per_subject), n_subjects).astype(np.int64)[:, None]
    return WindowSet(
        signals=signals, labels=labels, subject=_subject_ids("S", n_subjects)[subj], order=order,
        channels=channels, fs=fs, order_names=["window_id"],
        meta={"window_start": order[:, 0] * float(window_s), "window_end": (order[:, 0] + 1) * float(window_s)},
        modality="PPG", label_name="quality", class_names=QUALITY_CLASSES,
        source=f"synthetic:{'quality' if with_acc else 'ppg-ecg'}?seed={seed}",
    )


def _artefact_kinds(rng: np.random.Generator, label: int) -> list[str]:
    if label == 0:
        return list(rng.choice(ARTEFACTS, size=rng.integers(1, 3), replace=False))
    return [str(rng.choice(["wander", "burst", "motion"]))] if rng.uniform() < 0.5 else []


def _segment(rng: np.random.Generator, t_len: int, low: int, high: int) -> slice:
    length = int(rng.integers(low, max(low + 1, min(high, t_len))))
    start = int(rng.integers(0, max(1, t_len - length)))
    return slice(start, start + length)


def _apply_artefact(kind: str, sev: float, rng: np.random.Generator, t: np.ndarray, ppg: np.ndarray,
                    ecg: np.ndarray, acc: np.ndarray, amp: float, fs: float) -> None:
    """Modify one window's channels in place."""
    t_len = t.size
    if kind == "motion":
        seg = _segment(rng, t_len, int(2 * fs), int(6 * fs))
        freqs = rng.uniform(1, 4, 3)
        wave = sum(np.sin(2 * np.pi * f * t[seg] + rng.uniform(0, 6.3)) for f in freqs) / 3
        acc[:, seg] += sev * 0.8 * wave[None, :] * rng.normal(1, 0.3, (3, 1))
        ppg[seg] += sev * 2.0 * amp * wave
        ecg[seg] += sev * 0.3 * wave
    elif kind == "clipping":
        lo, hi = np.quantile(ppg, [sev * 0.3, 1 - sev * 0.3])
        np.clip(ppg, lo, hi, out=ppg)
    elif kind == "wander":
        f = rng.uniform(0.05, 0.5)
        drift = sev * 1.5 * np.sin(2 * np.pi * f * t + rng.uniform(0, 6.3))
        ppg += drift * amp
        ecg += drift
    elif kind == "flat":
        seg = _segment(rng, t_len, int(sev * 0.3 * t_len) + 1, int(sev * 0.7 * t_len) + 2)
        ppg[seg] = ppg[seg.start]
    elif kind == "burst":
        seg = _segment(rng, t_len, int(0.5 * fs), int(2 * fs))
        ppg[seg] += rng.normal(0, sev * amp, seg.stop - seg.start)
        ecg[seg] += rng.normal(0, sev * 0.8, seg.stop - seg.start)


def synthetic_eeg(
    *,
    n_subjects: int = 16,
    parents_per_subject: int = 6,
    subs_per_parent: int = 4,
    fs: float = 256.0,
    window_s: float = 8.0,
    seed: int = 0,
) -> WindowSet:
    if n_subjects < 2:
        raise ConfigError("synthetic EEG needs n_subjects >= 2 (one per remission class at least)")
    rng = np.random.default_rng(seed)
    t_len = int(round(window_s * fs))
    per_subject = parents_per_subject * subs_per_parent
    length = per_subject * t_len
    labels_subject = rng.permutation(np.arange(n_subjects) % 2)
    freqs = np.fft.rfftfreq(length, 1 / fs)
    pink = 1 / np.sqrt(np.maximum(freqs, 0.5))

    def band(peak: float, width: float) -> np.ndarray:
        return np.exp(-0.5 * ((freqs - peak) / width) ** 2)

    windows = []
    for s in range(n_subjects):
        remission = labels_subject[s]
        alpha_peak = rng.uniform(8.5, 11.5)
        alpha = rng.lognormal(0.0, 0.35) * (1.4 if remission else 1.0)
        theta = rng.lognormal(0.0, 0.35) * (0.8 if remission else 1.0)
        asym = rng.normal(0, 0.15) + (0.15 if remission else 0.0)
        # TP channels carry more alpha; AF8 vs AF7 alpha differs by the asymmetry.
        alpha_gain = np.array([1 - asym, 1 + asym, 1.6, 1.6]) * alpha
        spectrum = (pink[None, :] + 3 * alpha_gain[:, None] * band(alpha_peak, 0.8)[None, :]
                    + 2 * theta * band(6.0, 1.0)[None, :])
        white = np.fft.rfft(rng.normal(size=(4, length)), axis=1)
        x = np.fft.irfft(white * spectrum, n=length, axis=1)
        x *= 15.0 / x.std(axis=1, keepdims=True)  # ~15 uV background
        _add_blinks(x, rng, fs)
        windows.append(x.reshape(4, per_subject, t_len).transpose(1, 0, 2))

    signals = np.concatenate(windows).astype(np.float32)
    w = np.tile(np.arange(per_subject), n_subjects)
    order = np.column_stack([w // subs_per_parent, w % subs_per_parent]).astype(np.int64)
    return WindowSet(
        signals=signals, labels=np.repeat(labels_subject, per_subject).astype(np.int64),
        subject=np.repeat(_subject_ids("P", n_subjects), per_subject), order=order,
        channels=MUSE_CHANNELS, fs=fs, order_names=["parent_window_id", "sub_window_id"],
        meta={"window_start": w * float(window_s), "window_end": (w + 1) * float(window_s)},
        modality="EEG", subject_name="Participant", label_name="Remission",
        class_names=REMISSION_CLASSES, source=f"synthetic:eeg?seed={seed}",
    )


def _add_blinks(x: np.ndarray, rng: np.random.Generator, fs: float) -> None:
    """Eye blinks: ~100 uV bumps on the frontal channels (AF7, AF8), a few per minute."""
    length = x.shape[1]
    n_blinks = rng.poisson(length / fs / 60 * 12)
    t = np.arange(int(0.6 * fs)) / fs
    shape = 100 * np.exp(-0.5 * ((t - 0.3) / 0.07) ** 2)
    for start in rng.integers(0, length - shape.size, n_blinks):
        x[:2, start:start + shape.size] += shape[None, :] * rng.uniform(0.6, 1.2)
