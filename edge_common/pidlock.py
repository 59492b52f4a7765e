"""An exclusive lock on a directory, held for a process's lifetime, that names its holder.

The lock is an flock(2) on a file inside the directory, so the kernel releases it whenever the
process ends, `kill -9` included: a restart after a crash never finds a stale lock. The file
holds the holder's pid, only so that a refusal can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class LockHeldError(Exception):
    """Another live process holds the lock."""

    def __init__(self, path: Path, holder: int | None) -> None:
        super().__init__(f"{path} is held by pid {holder}" if holder else f"{path} is held")
        self.path = path
        self.holder = holder  # the holder's pid, None when it did not write one


class PidLock:
    """The exclusive lock at `path`; `acquire` once, `release` at exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise LockHeldError naming the holder's pid."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise LockHeldError(self.path, holder) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (the file stays: removing it would race with the next holder)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def holder_pid(path: Path) -> int | None:
    """The pid of the live process holding `path`, 0 if its pid is unknown, None if free.

    Probes with a shared lock taken and dropped at once, without creating the lock file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None  # no lock file (never started here) or unreadable: nothing to report
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
