"""Atomic file output: write to a temporary sibling, rename into place on success; a disk that is full or
read-only is one line naming the directory (and the bytes it has and needs), not an OSError traceback."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from biosig.errors import DataError

#: errors that mean "this directory cannot take the output", whatever wrote it (Python, Arrow, a library)
DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EROFS: "the file system is read-only",
               errno.EACCES: "permission denied", errno.EDQUOT: "the disk quota is exceeded"}


@contextlib.contextmanager
def atomic_path(path: str | Path, *, needs_bytes: int = 0) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path`, on error it is removed.

    A reader never sees a half-written file and a failed write leaves nothing behind. `needs_bytes` (an
    estimate of the output's size) is checked against the free space first.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.{os.getpid()}.", suffix=".tmp", dir=final.parent)
        os.close(fd)
    except OSError as exc:
        raise disk_error(exc, final.parent, needs_bytes) or exc from None
    tmp = Path(tmp_name)
    try:
        _require_space(final.parent, needs_bytes)
    except DataError:
        tmp.unlink(missing_ok=True)
        raise
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file normal permissions
        os.replace(tmp, final)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise disk_error(exc, final.parent, needs_bytes) or exc from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def remove_dead_temporaries(directory: Path) -> int:
    """Delete the temporary files (`.NAME.PID.….tmp`) that processes on this host which are gone left in
    `directory` (a kill -9 mid-write); a live writer's files are kept. Returns how many were removed."""
    removed = 0
    for leftover in directory.glob(".*.tmp") if directory.is_dir() else ():
        pid = next((int(part) for part in leftover.name.split(".") if part.isdigit()), None)
        if pid is not None and not _alive(pid):
            leftover.unlink(missing_ok=True)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def disk_error(exc: OSError, directory: Path, needs_bytes: int = 0) -> DataError | None:
    """The one-line DataError for a full, read-only or forbidden output directory (None for other errors).
    Arrow reports errno only inside its message ("[errno 28] ..."), so that is read too."""
    code = exc.errno if exc.errno in DISK_ERRNOS else next(
        (c for c in DISK_ERRNOS if f"[errno {c}]" in str(exc).lower()), None)
    if code is None:
        return None
    return _cannot_write(directory, code, needs_bytes)


def _require_space(directory: Path, needs_bytes: int) -> None:
    if needs_bytes and _free(directory) < needs_bytes:
        raise _cannot_write(directory, errno.ENOSPC, needs_bytes)


def _cannot_write(directory: Path, code: int, needs_bytes: int) -> DataError:
    space = ""
    if code in (errno.ENOSPC, errno.EDQUOT) and (free := _free(directory)) >= 0:
        space = f" ({_size(free)} free" + (f", about {_size(needs_bytes)} needed)" if needs_bytes else ")")
    return DataError(f"cannot write to {directory.absolute()}: {DISK_ERRNOS[code]}{space}")


def _free(directory: Path) -> int:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return -1


def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
