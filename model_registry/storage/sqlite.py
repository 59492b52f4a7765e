"""`SQLiteStorage`: the registry's records in one SQLite file, off the event loop.

One connection lives on one worker thread (a single-thread executor) and every call hands the
steps of one method to it whole, so the loop only schedules and the calls are serialized in
the order they were made. If an awaiting task is cancelled, its steps still run to the end: a
write is committed or rolled back whole, never abandoned half-way.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

from model_registry.errors import ConfigError
from model_registry.storage import migrations
from model_registry.storage._db import (
    READ,
    WRITE,
    ConstraintViolationError,
    Mode,
    Result,
    Steps,
    ViolationKind,
)
from model_registry.storage._sql_storage import SQLStorage

BUSY_TIMEOUT_MS = 5000  # how long a write waits for another process's write lock
_VIOLATIONS: dict[str, ViolationKind] = {
    "SQLITE_CONSTRAINT_PRIMARYKEY": "unique",
    "SQLITE_CONSTRAINT_UNIQUE": "unique",
    "SQLITE_CONSTRAINT_FOREIGNKEY": "foreign_key",
}
_P = ParamSpec("_P")
_T = TypeVar("_T")


def run_steps(
    conn: sqlite3.Connection,
    mode: Mode,
    steps: Callable[_P, Steps[_T]],
    *args: _P.args,
    **kwargs: _P.kwargs,
) -> _T:
    """Run `steps(*args)` on `conn` in `mode` and return their result."""
    if mode == READ:  # each statement on its own, as the connection autocommits
        return _drive(conn, steps(*args, **kwargs))
    # IMMEDIATE takes the write lock up front, so a read-then-write block cannot fail half-way
    # with SQLITE_BUSY when another process writes the same file.
    conn.execute("BEGIN IMMEDIATE" if mode == WRITE else "BEGIN")
    try:
        result = _drive(conn, steps(*args, **kwargs))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _drive(conn: sqlite3.Connection, steps: Steps[_T]) -> _T:
    try:
        query = next(steps)
        while True:
            try:
                if query.many:
                    cursor = conn.executemany(query.sql, query.params)
                else:
                    cursor = conn.execute(query.sql, query.params)
                result = Result(cursor.fetchall(), cursor.rowcount)
            except sqlite3.IntegrityError as e:
                kind = _VIOLATIONS.get(e.sqlite_errorname, "other")
                query = steps.throw(ConstraintViolationError(kind, str(e)))
            else:
                query = steps.send(result)
    except StopIteration as done:
        value: _T = done.value
        return value


def migrate(
    conn: sqlite3.Connection, pending: Sequence[migrations.Migration] = migrations.MIGRATIONS
) -> int:
    """Apply the pending migrations, each in its own transaction; return the schema version."""
    found = run_steps(conn, WRITE, migrations.prepare, "sqlite", pending)
    for migration in pending:
        if migration.version > found:
            run_steps(conn, WRITE, migrations.apply, migration, "sqlite")
    return run_steps(conn, READ, migrations.current_version)


def connect(path: Path) -> sqlite3.Connection:
    """Open the database file, set it up and migrate it; raises ConfigError if unusable."""
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as e:
        raise ConfigError(f"{path}: cannot open the database: {e}") from e
    try:
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
        # WAL lets readers in other processes (a CLI, a backup) run while the registry writes.
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        migrate(conn)
    except ConfigError as e:
        conn.close()
        raise ConfigError(f"{path}: {e}") from e
    except sqlite3.DatabaseError as e:
        conn.close()
        raise ConfigError(f"{path}: not a usable registry database: {e}") from e
    except BaseException:
        conn.close()
        raise
    return conn


class SQLiteStorage(SQLStorage):
    """`Storage` on one SQLite file, with every call run on one worker thread."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None

    async def open(self) -> None:
        """Connect and apply pending schema migrations; a second call does nothing."""
        if self._executor is not None:
            return
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-storage")
        try:
            loop = asyncio.get_running_loop()
            self._conn = await loop.run_in_executor(executor, connect, self.path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        self._executor = executor

    async def close(self) -> None:
        """Let queued calls finish, then close the connection and stop the thread."""
        executor, conn = self._executor, self._conn
        if executor is None or conn is None:
            return
        self._executor = self._conn = None  # later calls fail at once instead of queueing
        try:
            # Queued behind every call already made, so those all finish first.
            await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        finally:
            executor.shutdown(wait=False)  # the queue is empty: the thread exits by itself

    async def acquire_duty(self, name: str) -> bool:
        """Always True: one `serve` uses a SQLite file, the one holding serve.lock."""
        if self._executor is None:
            raise RuntimeError(f"SQLiteStorage({self.path}) is not open")
        return True

    async def _run(
        self, mode: Mode, steps: Callable[_P, Steps[_T]], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run the steps on the worker thread, in one call, and return their result."""
        if self._executor is None or self._conn is None:
            raise RuntimeError(f"SQLiteStorage({self.path}) is not open")
        job = functools.partial(run_steps, self._conn, mode, steps, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._executor, job)
