"""One agent per state directory: an flock on `agent.lock`, held for the process lifetime.

Two agents on one directory would both connect as the device (knocking each other off the
broker, since the broker allows one session per client id) and both rewrite `state.json`. The
lock is an flock(2) on a file inside the directory, so the kernel releases it whenever the
process ends, `kill -9` included: a restart after a crash never finds a stale lock. The file
holds the pid of the holder, only so that the refusal can name it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from edge_agent.errors import ConfigError

LOCK_FILE = "agent.lock"


class StateDirInUseError(ConfigError):
    """Another live agent holds the state directory."""


class StateDirLock:
    """The exclusive lock of one state directory; `acquire` once, `release` at exit."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise StateDirInUseError naming the holder's pid."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise StateDirInUseError(in_use_message(self.path.parent, holder)) from None
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (the file stays: removing it would race with the next agent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def holder_pid(state_dir: Path) -> int | None:
    """The pid of the live agent holding `state_dir`, 0 if its pid is unknown, None if free.

    Probes with a shared lock taken and dropped at once, without creating the lock file.
    """
    try:
        fd = os.open(state_dir / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
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


def in_use_message(state_dir: Path, pid: int | None) -> str:
    """The sentence a second agent refuses to start with."""
    who = f"another edge-agent (pid {pid})" if pid else "another edge-agent"
    return (
        f"state directory {state_dir} is in use by {who}; "
        "each agent needs a state directory of its own"
    )


def _read_pid(fd: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        return int(text) if text else None
    return None
