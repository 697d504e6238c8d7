"""Dataset naming convention: `{MODALITY}_{window_s}s_{channels}_{N}windows_{kind}`,
e.g. `EEG_8s_af7-af8-tp9-tp10_1234windows_primary`."""

from __future__ import annotations

import re

from biosig.data.windowset import WindowSet
from biosig.errors import ConfigError

_KIND = re.compile(r"^[a-z][a-z0-9-]*$")


def channel_token(channels: list[str]) -> str:
    """['ACC_X', 'PPG'] -> 'accx-ppg': the channel part of dataset and model names."""
    return "-".join(c.lower().replace("_", "") for c in channels)


def format_seconds(seconds: float) -> str:
    """8.0 -> '8', 8.192 -> '8.192', 10.0 -> '10'."""
    return f"{seconds:.3f}".rstrip("0").rstrip(".")


def check_kind(kind: str) -> None:
    if not _KIND.match(kind):
        raise ConfigError(f"config key 'kind' must be lower-case letters, digits and '-', got {kind!r}")


def dataset_name(ws: WindowSet, kind: str = "primary") -> str:
    return conventional_name(ws.modality, ws.window_s, ws.channels, ws.n_windows, kind)


def conventional_name(modality: str, window_s: float, channels: list[str], n_windows: int, kind: str) -> str:
    check_kind(kind)
    return f"{modality}_{format_seconds(window_s)}s_{channel_token(channels)}_{n_windows}windows_{kind}"


def channels_from_token(parts: list[str]) -> list[str]:
    """['accx', 'ppg'] -> ['ACC_X', 'PPG'] (the inverse of channel_token for known channels)."""
    from biosig.data.channels import KNOWN_CHANNELS

    by_token = {c.lower().replace("_", ""): c for c in KNOWN_CHANNELS}
    return [by_token.get(p, p.upper()) for p in parts]


#: a dataset named by what the tracking store recorded: `digest:HEX` (8+ hex digits), its conventional name,
#: a dataset file path from another machine (`…_{digest12}.parquet`), or an artifact-store URI
DIGEST_SPEC = re.compile(r"^digest:([0-9a-f]{8,64})$")
DATASET_NAME = re.compile(r"^[A-Za-z0-9.]+_[0-9.]+s_[a-z0-9-]+_\d+windows_[a-z0-9]+$")
DIGEST_IN_FILE = re.compile(r"_([0-9a-f]{12})\.parquet$")
ARTIFACT_URIS = ("mlflow-artifacts:", "runs:/")


def is_dataset_reference(spec: str) -> bool:
    """True for a spec the tracking layer resolves (see tracking.dataset_store), not a source read as is."""
    return bool(spec.startswith(ARTIFACT_URIS) or DIGEST_SPEC.match(spec) or DATASET_NAME.match(spec)
                or DIGEST_IN_FILE.search(spec))
