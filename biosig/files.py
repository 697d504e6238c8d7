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


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (PyYAML keeps the last
    silently: `epochs: 2` then `epochs: 3` would train 3 epochs with no word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {seen[key]} and {key_node.start_mark.line + 1})",
                    key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """YAML text parsed safely, refusing duplicate keys."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe


def read_text(path: Path, what: str) -> str:
    """A text file as UTF-8; a file in another encoding is one line naming it and the byte offset."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{what} {path} is not UTF-8 text (byte {exc.start}: {exc.object[exc.start:exc.start + 1]!r}): "
                          "save it as UTF-8") from None


def read_yaml_mapping(path: Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file that must hold a mapping; ConfigError names `what` and the path otherwise."""
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    text = read_text(path, what)
    try:
        data = load_yaml(text) or {}
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
