"""One `serve` per registry home on SQLite: an flock on `serve.lock`, held while it runs.

Two `serve` processes on one home would share its SQLite file, both publish the retained state,
both run the upkeep (renewing assignments with competing seqs) and overwrite each other's
`serve.json`. The lock is an flock(2), so the kernel drops it whenever its holder dies, `kill -9`
included. It is taken only when the database is the home's SQLite file: registry replicas on
a PostgreSQL server (`storage.database`) share a configuration and must all be able to start;
they coordinate through the database, not through a local file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from model_registry.errors import ConflictError

LOCK_FILE = "serve.lock"


class HomeLock:
    """The exclusive lock of one registry home; `acquire` once, `release` at exit."""

    def __init__(self, home: Path) -> None:
        self.path = home / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ConflictError naming the holder's pid."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f"another model-registry serve (pid {holder})" if holder else "another serve"
            raise ConflictError(
                f"registry home {self.path.parent} is in use by {who}; with SQLite storage "
                "one serve runs per home"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (the file stays: removing it would race with the next serve)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def holder_pid(home: Path) -> int | None:
    """The pid of the live `serve` holding `home`, 0 if unknown, None if nobody holds it."""
    try:
        fd = os.open(home / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_pid(fd) or 0
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        return int(text) if text else None
    return None
