"""Error types. Every user-facing failure is a BiosigError whose message names the culprit
(file, field, parameter); the CLI prints it without a traceback and exits non-zero. `FileProblem` is
not raised: it records one unreadable input file of a multi-file source."""

from __future__ import annotations

import dataclasses


class BiosigError(Exception):
    """Base class for errors caused by input the user can fix."""


class ConfigError(BiosigError):
    """A config file, parameter or override is unknown, mistyped or out of range."""


class DataError(BiosigError):
    """A dataset file or in-memory WindowSet is missing, malformed or inconsistent."""


class TrackingError(BiosigError):
    """The tracking store or an MLflow run cannot be used as asked."""


class TrainingError(BiosigError):
    """Training cannot go on: a non-finite loss, unusable labels, nothing to resume from."""


class Terminated(BaseException):
    """Raised in the main thread on SIGTERM so that the run ends KILLED, like Ctrl-C; the CLI exits 143."""


@dataclasses.dataclass
class FileProblem:
    """A problem with one input file, listed in the run's dataset/data_errors.csv."""

    file: str
    error: str
    kind: str = "error"  # error: skipped | warning: read with repairs | rejected: windows dropped by a gate
    count: int = 1
