"""Who is running a run: host, pid and a heartbeat tag, so that a run whose process died (kill -9,
a lost node) can be told from one that is still working, by `resume=` and by `biosig doctor`."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from biosig.errors import ConfigError
from biosig.tracking.tags import HEARTBEAT_TAG, HOST_TAG, LEGACY_PROCESS_TAGS, PID_TAG

HEARTBEAT_ENV = "BIOSIG_HEARTBEAT_S"
STALE_AFTER_BEATS = 5
SCRATCH_PREFIX = "biosig-"


def heartbeat_seconds() -> float:
    """Seconds between heartbeats ($BIOSIG_HEARTBEAT_S, default 60); a run silent for STALE_AFTER_BEATS of
    them counts as dead on another host. Checked when tracking is configured, before any run exists."""
    raw = os.environ.get(HEARTBEAT_ENV, "60")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds >= 0.1):
        raise ConfigError(f"environment variable {HEARTBEAT_ENV} must be a number of seconds >= 0.1, got {raw!r}")
    return seconds


def owner_tags() -> dict[str, str]:
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()), HEARTBEAT_TAG: f"{time.time():.0f}"}


@contextlib.contextmanager
def heartbeat(client: MlflowClient, run_id: str, every_s: float | None = None) -> Iterator[None]:
    """Refresh the heartbeat tag from a daemon thread while the block runs."""
    every_s = every_s or heartbeat_seconds()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(every_s):
            with contextlib.suppress(Exception):  # a missed beat only makes the run look older
                client.set_tag(run_id, HEARTBEAT_TAG, f"{time.time():.0f}")

    thread = threading.Thread(target=beat, name=f"biosig-heartbeat-{run_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()


@dataclasses.dataclass
class Liveness:
    alive: bool
    reason: str  # why we think so, for messages


def liveness(run: Run, *, stale_after_s: float | None = None, now: float | None = None) -> Liveness:
    """Whether the process of a RUNNING run is still there: on this host by its pid, elsewhere by the
    age of its heartbeat (runs from before heartbeats: by their start time)."""
    tags = {**{new: run.data.tags[old] for new, old in LEGACY_PROCESS_TAGS.items() if old in run.data.tags},
            **run.data.tags}
    now = time.time() if now is None else now
    stale_after_s = STALE_AFTER_BEATS * heartbeat_seconds() if stale_after_s is None else stale_after_s
    host, pid = tags.get(HOST_TAG), tags.get(PID_TAG, "")
    if host == socket.gethostname() and pid.isdigit():
        if _pid_alive(int(pid)):
            return Liveness(True, f"process {pid} on {host} is running")
        return Liveness(False, f"process {pid} on {host} is gone")
    beat = float(tags.get(HEARTBEAT_TAG) or run.info.start_time / 1000)
    silent = now - beat
    where = f"on {host}" if host else "(no host recorded)"
    if silent > stale_after_s:
        return Liveness(False, f"no heartbeat {where} for {silent / 60:.0f} min")
    return Liveness(True, f"heartbeat {where} {silent:.0f} s ago")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def scratch_dir(kind: str) -> tempfile.TemporaryDirectory:
    """A command's temporary folder, named with its pid (`biosig-{kind}-{pid}-…`): removed on exit,
    failure and SIGTERM by the context manager, and after a kill -9 by `biosig doctor --fix`."""
    return tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{kind}-{os.getpid()}-")


def leftover_scratch() -> list[Path]:
    """Scratch folders on this machine whose process is gone."""
    pattern = re.compile(rf"^{SCRATCH_PREFIX}[a-z]+-(\d+)-")
    found = []
    for path in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        match = pattern.match(path.name)
        if match and path.is_dir() and not _pid_alive(int(match[1])):
            found.append(path)
    return sorted(found)
