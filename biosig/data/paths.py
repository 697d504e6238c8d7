"""Checks shared by the dataset readers."""

from __future__ import annotations

from pathlib import Path

from biosig.errors import DataError


def require_input_file(path: str | Path, suffix: str, what: str) -> Path:
    """The path exists and ends in `suffix`, else a DataError naming it."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"dataset file not found: {path}")
    if path.suffix != suffix:
        raise DataError(f"expected {what}, got {path}")
    return path
