"""Console output through `logging`: INFO lines go to stdout as they are, WARNING and above to stderr, and
in a multi-process job (torchrun sets RANK) only rank 0 prints. Library code logs; only the CLI echoes."""

from __future__ import annotations

import logging
import os
import sys

ROOT = "biosig"


class _RankZero(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return os.environ.get("RANK", "0") == "0"


class _Console(logging.StreamHandler):
    """Writes to whatever sys.stdout / sys.stderr is at the time (redirection, pytest's capture)."""

    def __init__(self, to_stderr: bool) -> None:
        super().__init__()
        self.to_stderr = to_stderr

    @property
    def stream(self):  # logging reads this attribute
        return sys.stderr if self.to_stderr else sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property decides
        pass


def get_logger(name: str) -> logging.Logger:
    """The logger for module `name` (`__name__`), under biosig's console handlers."""
    _configure()
    return logging.getLogger(name)


def _configure() -> None:
    root = logging.getLogger(ROOT)
    if root.handlers:
        return
    out, err = _Console(to_stderr=False), _Console(to_stderr=True)
    out.addFilter(lambda record: record.levelno < logging.WARNING)
    err.setLevel(logging.WARNING)
    for handler in (out, err):
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(_RankZero())
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    root.propagate = False  # granite-tsfm configures the root logger; biosig's lines keep their own format


def banner(log: logging.Logger, lines: list[str]) -> None:
    """A warning nobody scrolls past (mode or mean collapse): framed lines of `!`."""
    log.info("!" * 78)
    for line in lines:
        log.info(f"!! {line}")
    log.info("!" * 78)
