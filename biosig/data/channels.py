"""Channel identity by name. Every channel biosig handles is listed here with its unit and
modality; anything else is rejected so that a typo never becomes a silent new channel."""

from __future__ import annotations

from typing import Any

import numpy as np

from biosig.errors import DataError

#: name -> (unit, modality)
KNOWN_CHANNELS: dict[str, tuple[str, str]] = {
    "PPG": ("a.u.", "PPG"),
    "ECG": ("mV", "ECG"),
    "ACC_X": ("g", "ACC"),
    "ACC_Y": ("g", "ACC"),
    "ACC_Z": ("g", "ACC"),
    "AF7": ("uV", "EEG"),
    "AF8": ("uV", "EEG"),
    "TP9": ("uV", "EEG"),
    "TP10": ("uV", "EEG"),
}

MUSE_CHANNELS = ["AF7", "AF8", "TP9", "TP10"]
PPG_ECG_CHANNELS = ["PPG", "ECG"]
QUALITY_CHANNELS = ["ACC_X", "ACC_Y", "ACC_Z", "PPG", "ECG"]


def check_channels(channels: list[str], where: str) -> None:
    """Raise DataError for unknown or duplicated channel names."""
    unknown = [c for c in channels if c not in KNOWN_CHANNELS]
    if unknown:
        raise DataError(
            f"unknown channel name(s) {unknown} in {where}; known channels: {', '.join(KNOWN_CHANNELS)}"
        )
    dupes = sorted({c for c in channels if channels.count(c) > 1})
    if dupes:
        raise DataError(f"duplicated channel name(s) {dupes} in {where}")


def single_rate(value: Any, where: str) -> float:
    """The one sampling rate a file stores for all its channels; per-channel rates (a list, an array or a
    mapping of channel to rate) are refused by name: a window holds every channel at one rate."""
    rates = list(value.values()) if isinstance(value, dict) else np.asarray(value).reshape(-1).tolist()
    if len(set(rates)) > 1:
        raise DataError(f"{where} stores per-channel sampling rates {value if isinstance(value, dict) else rates}: "
                        "biosig windows hold every channel at one rate; resample to one rate first (recording "
                        "sources do it with the preprocess file's target_fs)")
    try:
        return float(rates[0])
    except (IndexError, TypeError, ValueError):
        raise DataError(f"{where} stores the sampling rate fs as {value!r}, not a number") from None


def units_for(channels: list[str]) -> dict[str, str]:
    return {c: KNOWN_CHANNELS[c][0] for c in channels}


def infer_modality(channels: list[str]) -> str:
    """EEG for EEG montages, PPG when a PPG channel is present, else the first channel's modality."""
    modalities = [KNOWN_CHANNELS[c][1] for c in channels]
    if "EEG" in modalities:
        return "EEG"
    if "PPG" in modalities:
        return "PPG"
    return modalities[0]
