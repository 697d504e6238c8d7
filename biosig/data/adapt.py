"""Fit windows to a checkpoint's input shape: channel selection by name, sampling rate and context
length (crop, pad or resample, per config), or refuse with an error naming both shapes."""

from __future__ import annotations

from fractions import Fraction
from typing import Literal

import numpy as np
from scipy.signal import resample_poly

from biosig.errors import DataError

ContextFit = Literal["error", "crop", "pad", "crop_or_pad", "resample"]
CONTEXT_FITS = ("error", "crop", "pad", "crop_or_pad", "resample")


def select_channels(signals: np.ndarray, have: list[str], want: list[str], where: str) -> np.ndarray:
    """Reorder/select [N, C, T] to the channel names `want`; missing names are an error."""
    missing = [c for c in want if c not in have]
    if missing:
        raise DataError(f"channels {missing} are required but missing from {where} (it has {have})")
    index = [have.index(c) for c in want]
    if index == list(range(len(have))):
        return signals
    return np.ascontiguousarray(signals[:, index, :])


def fit_context(signals: np.ndarray, fs: float, *, target_length: int, target_fs: float, policy: ContextFit,
                where: str, patch_length: int = 0) -> np.ndarray:
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
        out = resample_poly(signals, ratio.numerator, ratio.denominator, axis=-1)
        out = _crop(out, target_length) if out.shape[-1] >= target_length else _pad(out, target_length)
        return np.ascontiguousarray(out, dtype=np.float32)
    if abs(fs - target_fs) > 1e-6:
        raise DataError(f"{where} has windows of {shape}, the checkpoint expects {wanted}: "
                        "sampling rates differ; set context_fit=resample or resample the data")
    if length == target_length:
        return signals
    if length > target_length and policy in ("crop", "crop_or_pad"):
        return _crop(signals, target_length)
    if length < target_length and policy in ("pad", "crop_or_pad"):
        return _pad(signals, target_length)
    raise DataError(f"{where} has windows of {shape}, the checkpoint expects {wanted}; "
                    f"context_fit={policy} cannot fit them: use "
                    f"{'crop' if length > target_length else 'pad'}, crop_or_pad or resample")


def _crop(signals: np.ndarray, length: int) -> np.ndarray:
    start = (signals.shape[-1] - length) // 2
    return np.ascontiguousarray(signals[..., start:start + length])


def _pad(signals: np.ndarray, length: int) -> np.ndarray:
    width = [(0, 0)] * (signals.ndim - 1) + [(0, length - signals.shape[-1])]
    return np.pad(signals, width)


class ChannelStats:
    """Per-channel mean/std fitted on the training split only and stored in checkpoints."""

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
        return ((signals - self.mean[None, :, None]) / self.std[None, :, None]).astype(np.float32)

    def to_dict(self) -> dict:
        return {"channels": self.channels, "mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> "ChannelStats":
        return cls(data["channels"], np.array(data["mean"]), np.array(data["std"]))


def prepare_windows(signals: np.ndarray, channels: list[str], fs: float, spec: dict, where: str) -> np.ndarray:
    """Everything between raw windows and a model input, driven by a checkpoint's biosig.json:
    channel selection by name, context fit, normalisation with the stored training statistics."""
    x = select_channels(signals, channels, spec["channels"], where)
    x = fit_context(x, fs, target_length=spec["context_length"], target_fs=spec["fs"],
                    policy=spec.get("context_fit", "error"), where=where)
    return ChannelStats.from_dict(spec["normalisation"]).apply(x)
