"""One `serve` per registry home on SQLite: an flock on `serve.lock`, held while it runs.

Two `serve` processes on one home would share its SQLite file, both publish the retained state,
both run the upkeep (renewing assignments with competing seqs) and overwrite each other's
`serve.json`. The lock (edge_common/pidlock.py) is dropped by the kernel whenever its holder
dies, `kill -9` included. It is taken only when the database is the home's SQLite file: registry
replicas on a database server share a configuration and must all be able to start; they
coordinate through the database, not through a local file.
"""

from __future__ import annotations

from pathlib import Path

from edge_common.pidlock import LockHeldError, PidLock
from edge_common.pidlock import holder_pid as _holder_pid
from model_registry.errors import ConflictError

LOCK_FILE = "serve.lock"


class HomeLock:
    """The exclusive lock of one registry home; `acquire` once, `release` at exit."""

    def __init__(self, home: Path) -> None:
        self._lock = PidLock(home / LOCK_FILE)
        self.path = self._lock.path

    def acquire(self) -> None:
        """Take the lock or raise ConflictError naming the holder's pid."""
        try:
            self._lock.acquire()
        except LockHeldError as e:
            who = f"another model-registry serve (pid {e.holder})" if e.holder else "another serve"
            raise ConflictError(
                f"registry home {self.path.parent} is in use by {who}; with SQLite storage "
                "one serve runs per home"
            ) from None

    def release(self) -> None:
        """Let the lock go."""
        self._lock.release()


def holder_pid(home: Path) -> int | None:
    """The pid of the live `serve` holding `home`, 0 if unknown, None if nobody holds it."""
    return _holder_pid(home / LOCK_FILE)
