"""Typed configs: dataclasses filled from a YAML file plus `key=value` overrides.

One validation path serves YAML files, `mlflow run -P key=value` and `biosig CMD --key value`:
values arrive as YAML scalars or strings and are coerced to the field's declared type here.
Unknown keys, wrong types and out-of-range values raise ConfigError naming the key and the file.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping, TypeVar

from biosig.errors import ConfigError
from biosig.files import read_yaml_mapping, require_local_file
from biosig.secrets import refuse_passwords

C = TypeVar("C", bound="BaseConfig")

_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def option(default: Any = dataclasses.MISSING, help: str = "", *, factory: Callable[[], Any] | None = None) -> Any:
    """A config field with its help line, kept in the field's metadata: `biosig CMD --help` and
    `biosig backbones` print it (plug-ins' option dataclasses use it too)."""
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={"help": help})
    return dataclasses.field(default=default, metadata={"help": help})


def field_help(cls: type) -> dict[str, str]:
    """Each field's help line (the `help` of its metadata), by field name; fields without one are left out."""
    return {f.name: f.metadata["help"] for f in dataclasses.fields(cls) if f.metadata.get("help")}


@dataclasses.dataclass
class BaseConfig:
    """Keys shared by every command: where runs go and how they are seeded."""

    experiment: str = option("biosig", "MLflow experiment (under `mlflow run`: its --experiment-name decides)")
    tracking_uri: str = option("", "empty: $MLFLOW_TRACKING_URI, else sqlite:///<cwd>/mlflow.db")
    run_name: str = option("", "empty: named from the command and its subject")
    seed: int = option(0, "seeds data synthesis, splits, initialisation and shuffling")
    system_metrics: bool = option(True, "record CPU, memory, disk and network (GPU with nvidia-ml-py) as system/* metrics every "
                                  "10 s ($MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL) while the run is live")

    #: Keys holding a data source spec / a local input file: checked before any run starts, so a typo
    #: in a path is one line and no FAILED run.
    SOURCE_KEYS: ClassVar[tuple[str, ...]] = ()
    FILE_KEYS: ClassVar[tuple[str, ...]] = ()

    def validate(self) -> None:
        """Range checks beyond types; subclasses extend and call super()."""
        if not self.experiment:
            raise ConfigError("experiment must not be empty")
        for key in self.SOURCE_KEYS:
            if getattr(self, key):
                from biosig.data.sources import check_source_spec

                check_source_spec(key, getattr(self, key))
        for key in self.FILE_KEYS:
            require_local_file(key, getattr(self, key))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def preset(cls, values: Mapping[str, Any]) -> dict[str, Any]:
        """Defaults that depend on keys the user set (e.g. arch=mamba2 selects the EEG model's sizes);
        they rank below the YAML file and the command line."""
        return {}


def load_config(
    cls: type[C],
    config_file: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> C:
    """Build `cls` from defaults < YAML file < overrides, then validate.

    `overrides` may hold strings (from the command line) or typed values.
    """
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if config_file:
        path = Path(config_file)
        for key, value in read_yaml_mapping(path).items():
            values[key] = value
            origin[key] = str(path)
    for key, value in (overrides or {}).items():
        values[key] = value
        origin[key] = "command line"
    refuse_passwords(values, origin)  # before anything can log them

    for key, value in cls.preset(values).items():
        if key not in values:
            values[key] = value
            origin[key] = "defaults implied by the keys set"
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(
                f"unknown config key '{key}' (from {origin[key]}); "
                f"valid keys for this command: {', '.join(sorted(fields))}"
            )
        kwargs[key] = coerce(value, hints[key], key=key, origin=origin[key])
    config = cls(**kwargs)
    config.validate()
    return config


def coerce(value: Any, annotation: Any, *, key: str, origin: str) -> Any:
    """Coerce a YAML scalar or command-line string to `annotation` (str/int/float/bool,
    Optional[...], list[...], Literal[...])."""
    where = f"config key '{key}' (from {origin})"
    origin_type = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin_type in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        empty_list = value == "" and typing.get_origin(inner[0]) is list  # `--channels ""`: an empty list, refused
        if not empty_list and (value is None or (isinstance(value, str) and value.lower() in ("", "none", "null"))):
            if type(None) in args:
                return None
        return coerce(value, inner[0], key=key, origin=origin)
    if origin_type is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where} must be one of {list(args)}, got {value!r}")
        return value
    if origin_type is list:
        items = value
        if isinstance(value, str):
            items = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [coerce(v, args[0], key=key, origin=origin) for v in items]
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    if annotation in (int, float):
        return _number(value, annotation, where)
    if annotation is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return "" if value is None else str(value)
    raise TypeError(f"unsupported config annotation {annotation!r} for {key}")


def _number(value: Any, kind: type, where: str) -> int | float:
    """int accepts ints and integer strings; float also accepts ints. Booleans are never numbers."""
    accepted = (int,) if kind is int else (int, float)
    number = None
    if isinstance(value, accepted) and not isinstance(value, bool):
        number = kind(value)
    elif isinstance(value, str):
        try:
            number = kind(value)
        except ValueError:
            pass
    if number is None:
        raise ConfigError(f"{where} must be {'an integer' if kind is int else 'a number'}, got {value!r}")
    if not math.isfinite(number):  # nan/inf parse as floats but poison training and every comparison
        raise ConfigError(f"{where} must be a finite number, got {value!r}")
    if kind is int and abs(number) > INT64_MAX:  # torch, numpy and the stores hold 64-bit integers
        raise ConfigError(f"{where} is out of range (at most {INT64_MAX}), got {value!r}")
    return number


INT64_MAX = 2**63 - 1


def require_range(name: str, value: float, low: float | None = None, high: float | None = None,
                  *, low_open: bool = False, high_open: bool = False) -> None:
    """Raise ConfigError unless low <= value <= high (open bounds with the flags)."""
    bad = (low is not None and (value <= low if low_open else value < low)) or (
        high is not None and (value >= high if high_open else value > high)
    )
    if bad:
        if high is None:  # a one-sided bound reads as one: "must be > 0", not "in (0, None]"
            raise ConfigError(f"config key '{name}' must be {'>' if low_open else '>='} {low}, got {value}")
        if low is None:
            raise ConfigError(f"config key '{name}' must be {'<' if high_open else '<='} {high}, got {value}")
        lo = "(" if low_open else "["
        hi = ")" if high_open else "]"
        raise ConfigError(f"config key '{name}' must be in {lo}{low}, {high}{hi}, got {value}")
