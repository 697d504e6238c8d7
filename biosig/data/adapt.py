"""Fit windows to a checkpoint's input shape: channel selection by name, sampling rate and context
length (crop, pad or resample, per config), or refuse with an error naming both shapes."""

from __future__ import annotations

import dataclasses
from fractions import Fraction
from typing import Literal

import numpy as np

from biosig.errors import DataError

ContextFit = Literal["error", "crop", "pad", "crop_or_pad", "resample"]
CONTEXT_FITS = ("error", "crop", "pad", "crop_or_pad", "resample")


def require_channels(have: list[str], want: list[str], where: str) -> None:
    missing = [c for c in want if c not in have]
    if missing:
        raise DataError(f"channels {missing} are required but missing from {where} (it has {have})")


def select_channels(signals: np.ndarray, have: list[str], want: list[str], where: str) -> np.ndarray:
    """Reorder/select [N, C, T] to the channel names `want`; missing names are an error."""
    require_channels(have, want, where)
    index = [have.index(c) for c in want]
    if index == list(range(len(have))):
        return signals
    return np.ascontiguousarray(signals[:, index, :])


def fit_context(signals: np.ndarray, fs: float, *, target_length: int, target_fs: float, policy: ContextFit,
                where: str, patch_length: int = 0, contiguous: bool = True) -> np.ndarray:
    """[N, C, T] at `fs` -> [N, C, target_length] at `target_fs`; windows shorter than one patch
    (`patch_length`, when given) are refused whatever the policy.

    `resample` maps the whole window onto the context (polyphase, anti-aliased) and is the only policy
    that may change the sampling rate; `crop` keeps the centre, `pad` appends zeros (the channel mean
    after normalisation), `crop_or_pad` does whichever applies; `error` accepts exact fits only.
    """
    length = signals.shape[-1]
    shape = f"{length} samples at {fs:g} Hz"
    wanted = f"{target_length} samples at {target_fs:g} Hz"
    if policy not in CONTEXT_FITS:
        raise DataError(f"context_fit must be one of {CONTEXT_FITS}, got {policy!r}")
    if length * target_fs / fs < patch_length:  # padding would make tokens of nothing but fill
        raise DataError(f"{where} has windows of {shape}, shorter than one patch of {patch_length} samples at "
                        f"{target_fs:g} Hz: use longer windows or a smaller patch_length")
    if policy == "resample":
        if length == target_length:
            return signals
        ratio = Fraction(target_length, length).limit_denominator(1000)
        from scipy.signal import resample_poly  # only when resampling: keeps config imports light

        out = resample_poly(signals, ratio.numerator, ratio.denominator, axis=-1)
        out = _crop(out, target_length) if out.shape[-1] >= target_length else _pad(out, target_length)
        return np.ascontiguousarray(out, dtype=np.float32)
    if abs(fs - target_fs) > 1e-6:
        raise DataError(f"{where} has windows of {shape}, the checkpoint expects {wanted}: "
                        "sampling rates differ; set context_fit=resample or resample the data")
    if length == target_length:
        return signals
    if length > target_length and policy in ("crop", "crop_or_pad"):
        return _crop(signals, target_length, contiguous)
    if length < target_length and policy in ("pad", "crop_or_pad"):
        return _pad(signals, target_length)
    raise DataError(f"{where} has windows of {shape}, the checkpoint expects {wanted}; "
                    f"context_fit={policy} cannot fit them: use "
                    f"{'crop' if length > target_length else 'pad'}, crop_or_pad or resample")


def _crop(signals: np.ndarray, length: int, contiguous: bool = True) -> np.ndarray:
    """The centre `length` samples; `contiguous=False` leaves a view for a caller that copies anyway."""
    start = (signals.shape[-1] - length) // 2
    view = signals[..., start:start + length]
    return np.ascontiguousarray(view) if contiguous else view


def _pad(signals: np.ndarray, length: int) -> np.ndarray:
    width = [(0, 0)] * (signals.ndim - 1) + [(0, length - signals.shape[-1])]
    return np.pad(signals, width)


Normalisation = Literal["auto", "global", "window"]
#: normalisation=auto switches to per-window scaling when subjects' typical amplitudes differ this much
UNIT_MISMATCH_RATIO = 30.0


class ChannelStats:
    """Per-channel mean/std fitted on the training split only and stored in checkpoints (`global`).
    Keeps absolute amplitude, which quality labels depend on (a flat or saturated channel), but assumes
    every subject was recorded in the same units."""

    kind = "global"

    def __init__(self, channels: list[str], mean: np.ndarray, std: np.ndarray) -> None:
        self.channels = list(channels)
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    @classmethod
    def fit(cls, signals: np.ndarray, channels: list[str]) -> "ChannelStats":
        mean = signals.mean(axis=(0, 2), dtype=np.float64)
        std = signals.std(axis=(0, 2), dtype=np.float64)
        return cls(channels, mean, np.where(std > 1e-8, std, 1.0))  # a flat channel stays flat, not NaN

    def apply(self, signals: np.ndarray) -> np.ndarray:
        # float32 throughout (one output array): float64 statistics would upcast every sample, which made
        # this the slowest step of a streamed reader
        mean = self.mean.astype(np.float32)[None, :, None]
        scale = (1.0 / self.std).astype(np.float32)[None, :, None]
        out = np.subtract(signals, mean, dtype=np.float32)
        out *= scale
        return out

    def to_dict(self) -> dict:
        return {"kind": self.kind, "channels": self.channels, "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "ChannelStats | WindowScaling":
        """The normaliser a checkpoint stored (checkpoints before `kind` existed are global)."""
        if data.get("kind") == WindowScaling.kind:
            return WindowScaling(data["channels"])
        return cls(data["channels"], np.array(data["mean"]), np.array(data["std"]))


class WindowScaling:
    """`window`: each window and channel centred on its median and divided by its typical local
    amplitude (the median of the standard deviations of 8 equal segments). Unit-free, so subjects
    recorded in mV and in raw ADC counts share one input scale; a local artefact (burst, flat line,
    clipping) is still measured against the window's own clean amplitude, which a plain per-window
    z-score would shrink. Nothing is fitted."""

    kind = "window"
    segments = 8

    def __init__(self, channels: list[str]) -> None:
        self.channels = list(channels)

    @classmethod
    def fit(cls, signals: np.ndarray, channels: list[str]) -> "WindowScaling":
        return cls(channels)

    def apply(self, signals: np.ndarray) -> np.ndarray:
        x = np.asarray(signals, dtype=np.float64)
        usable = x.shape[-1] - x.shape[-1] % self.segments
        local = x[..., :usable].reshape(*x.shape[:-1], self.segments, -1).std(axis=-1)
        scale = np.median(local, axis=-1, keepdims=True)
        overall = x.std(axis=-1, keepdims=True)
        scale = np.maximum(scale, 1e-3 * overall)  # a mostly flat channel: its rare excursions set the scale
        scale = np.where(scale > 1e-12, scale, 1.0)  # an entirely flat channel stays flat
        return ((x - np.median(x, axis=-1, keepdims=True)) / scale).astype(np.float32)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "channels": self.channels}


def unit_mismatch(signals: np.ndarray, subject: np.ndarray, channels: list[str]) -> dict[str, float]:
    """Channels whose subjects' median window std differ by more than UNIT_MISMATCH_RATIO (max/min over
    subjects): the sign of recordings in different units (mV vs ADC counts)."""
    std = signals.std(axis=-1)  # [N, C]
    out = {}
    subjects = np.unique(subject)
    if len(subjects) < 2:
        return out
    typical = np.stack([np.median(std[subject == s], axis=0) for s in subjects])  # [S, C]
    for i, channel in enumerate(channels):
        low, high = typical[:, i].min(), typical[:, i].max()
        ratio = high / low if low > 0 else (np.inf if high > 0 else 1.0)
        if ratio > UNIT_MISMATCH_RATIO:
            out[channel] = float(ratio)
    return out


def prepare_windows(signals: np.ndarray, channels: list[str], fs: float, spec: dict, where: str) -> np.ndarray:
    """Everything between raw windows and a model input, driven by a checkpoint's biosig.json:
    channel selection by name, context fit, normalisation with the stored training statistics."""
    x = select_channels(signals, channels, spec["channels"], where)
    x = fit_context(x, fs, target_length=spec["context_length"], target_fs=spec["fs"],
                    policy=spec.get("context_fit", "error"), where=where)
    return ChannelStats.from_dict(spec["normalisation"]).apply(x)


@dataclasses.dataclass
class WindowTransform:
    """What a training batch goes through between storage and the model: channels selected by name, the
    window fitted to the model's context, then normalised (picklable, so reader processes apply it)."""

    have: list[str]
    want: list[str]
    fs: float
    target_length: int
    policy: ContextFit
    patch_length: int
    where: str
    stats: "ChannelStats | WindowScaling | None" = None
    target_fs: float = 0.0  # the model's rate (resampled to it); 0: the data's

    def __call__(self, signals: np.ndarray) -> np.ndarray:
        x = fit_context(select_channels(signals, self.have, self.want, self.where), self.fs,
                        target_length=self.target_length, target_fs=self.target_fs or self.fs, policy=self.policy,
                        where=self.where, patch_length=self.patch_length,
                        contiguous=self.stats is None)  # normalising writes a new contiguous array anyway
        return self.stats.apply(x) if self.stats is not None else x
