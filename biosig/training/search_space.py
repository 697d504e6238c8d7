"""Search-space files: extra dimensions on top of unfreeze_last_n and lr.

    head: [linear, mlp]                           # a list: categorical
    head_dropout: {low: 0.0, high: 0.5}           # float (or int, following the config key's type)
    weight_decay: {low: 1.0e-4, high: 0.1, log: true}
    stage1_epochs: {low: 1, high: 5}
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any

from biosig.errors import ConfigError
from biosig.files import read_yaml_mapping

#: Keys a search-space file may tune (the base dimensions unfreeze_last_n and lr are always searched).
TUNABLE = ("head", "head_dropout", "pooling", "stage1_epochs", "stage2_epochs", "weight_decay", "class_weights")


@dataclasses.dataclass(frozen=True)
class Dimension:
    name: str
    kind: str  # categorical | int | float
    choices: tuple = ()
    low: float = 0.0
    high: float = 0.0
    log: bool = False

    def suggest(self, trial) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)


def load_search_space(path: str, config_cls: type) -> list[Dimension]:
    if not path:
        return []
    file = Path(path)
    data = read_yaml_mapping(file, "search-space file")
    hints = typing.get_type_hints(config_cls)
    dims = []
    for key, spec in data.items():
        if key not in TUNABLE:
            raise ConfigError(f"{file}: '{key}' cannot be searched here; tunable keys: {', '.join(TUNABLE)} "
                              "(unfreeze_last_n and lr are always searched)")
        dims.append(_dimension(file, key, spec, hints[key]))
    return dims


def _dimension(file: Path, key: str, spec: Any, annotation: Any) -> Dimension:
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{file}: '{key}' lists no choices")
        return Dimension(key, "categorical", choices=tuple(spec))
    if not isinstance(spec, dict) or not {"low", "high"} <= set(spec) or set(spec) - {"low", "high", "log"}:
        raise ConfigError(f"{file}: '{key}' must be a list of choices or {{low: …, high: …, log: false}}")
    kind = "int" if annotation is int else "float"
    if annotation not in (int, float):
        raise ConfigError(f"{file}: '{key}' is not numeric; give a list of choices")
    low, high = spec["low"], spec["high"]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low >= high:
        raise ConfigError(f"{file}: '{key}' needs numbers low < high, got low={low!r}, high={high!r}")
    log = bool(spec.get("log", False))
    if log and low <= 0:
        raise ConfigError(f"{file}: '{key}' has log: true, so low must be > 0, got {low}")
    return Dimension(key, kind, low=float(low), high=float(high), log=log)
