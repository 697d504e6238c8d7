"""File helpers every layer may use: YAML files that must hold a mapping, local input files that must exist."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from biosig.errors import ConfigError


def require_local_file(key: str, value: str) -> None:
    """A non-empty local path must exist (s3:// and other URIs are checked where they are read)."""
    if value and "://" not in value and not Path(value).exists():
        raise ConfigError(f"config key '{key}': file not found: {value}")


def read_yaml_mapping(path: Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file that must hold a mapping; ConfigError names `what` and the path otherwise."""
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {yaml_problem(exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of keys to values")
    return data


def yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's multi-line message as one line: `line 2: expected ',' or ']'`."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"line {mark.line + 1}: {problem}" if mark is not None else problem
