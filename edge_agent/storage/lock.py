"""One agent per state directory: an flock on `agent.lock`, held for the process lifetime.

Two agents on one directory would both connect as the device (knocking each other off the
broker, since the broker allows one session per client id) and both rewrite `state.json`. The
mechanism (edge_common/pidlock.py) survives `kill -9`; this module says it in the agent's words.
"""

from __future__ import annotations

from pathlib import Path

from edge_agent.errors import ConfigError
from edge_common.pidlock import LockHeldError, PidLock
from edge_common.pidlock import holder_pid as _holder_pid

LOCK_FILE = "agent.lock"


class StateDirInUseError(ConfigError):
    """Another live agent holds the state directory."""


class StateDirLock:
    """The exclusive lock of one state directory; `acquire` once, `release` at exit."""

    def __init__(self, state_dir: Path) -> None:
        self._lock = PidLock(state_dir / LOCK_FILE)
        self.path = self._lock.path

    def acquire(self) -> None:
        """Take the lock or raise StateDirInUseError naming the holder's pid."""
        try:
            self._lock.acquire()
        except LockHeldError as e:
            raise StateDirInUseError(in_use_message(self.path.parent, e.holder)) from None

    def release(self) -> None:
        """Let the lock go."""
        self._lock.release()


def holder_pid(state_dir: Path) -> int | None:
    """The pid of the live agent holding `state_dir`, 0 if its pid is unknown, None if free."""
    return _holder_pid(state_dir / LOCK_FILE)


def in_use_message(state_dir: Path, pid: int | None) -> str:
    """The sentence a second agent refuses to start with."""
    who = f"another edge-agent (pid {pid})" if pid else "another edge-agent"
    return (
        f"state directory {state_dir} is in use by {who}; "
        "each agent needs a state directory of its own"
    )
