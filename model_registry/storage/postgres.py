"""`PostgresStorage`: the registry's records on a PostgreSQL server, through psycopg's async pool.

The same steps and the same numbered migrations as SQLite (`_db`, `migrations`) run here with
`%s` placeholders and the row locks that concurrent transactions on a server need. Several
registries may share one database (and one schema: `?options=-csearch_path%3Dname` in the URL
picks another). Duties that must run on one registry at a time are held as session advisory
locks on a connection of their own: the server releases them when that connection ends, also
when the process holding it is killed.

If an awaiting task is cancelled, the call still runs to the end in its own task, as on SQLite:
a write is committed or rolled back whole.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import socket
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar

import psycopg
from psycopg.rows import RowMaker
from psycopg_pool import AsyncConnectionPool

from model_registry.errors import ConfigError, UnavailableError
from model_registry.storage import migrations
from model_registry.storage._db import (
    READ,
    SNAPSHOT,
    ConstraintViolationError,
    Mode,
    Result,
    Steps,
)
from model_registry.storage._sql_storage import SQLStorage

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10  # to reach the server at all
POOL_WAIT_S = 30.0  # for a free connection of the pool before a call fails (UnavailableError)
POOL_SIZE = 10  # connections one registry keeps at most
# The lock names the schema too: each schema of a database is a registry of its own.
_TRY_DUTY = (
    "SELECT pg_try_advisory_lock(hashtextextended("
    "'model-registry duty ' || current_schema() || ' ' || %s, 0))"
)
# Until the URL says otherwise: find a silently dead peer in seconds, not the system's hours.
# The client side ends calls on a link that stopped answering; the server side (duty
# connection) ends the session of a registry host that vanished, so its duties move on.
_CLIENT_KEEPALIVE = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
    "tcp_user_timeout": "20000",  # ms that sent data may stay unacknowledged
}
_SERVER_KEEPALIVE = (
    "SELECT set_config('tcp_keepalives_idle', '10', false),"
    " set_config('tcp_keepalives_interval', '5', false),"
    " set_config('tcp_keepalives_count', '3', false),"
    " set_config('tcp_user_timeout', '20000', false)"
)
APPLICATION_NAME_MAX = 63  # what the server keeps of it
_P = ParamSpec("_P")
_T = TypeVar("_T")


_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


def redact(text: str) -> str:
    """The text with the password of any URL in it replaced, for messages and logs."""
    return _PASSWORD.sub(r"\1***@", text)


def describe(error: psycopg.Error) -> str:
    """The server's or libpq's message as one line (the URL it may quote without password)."""
    primary = error.diag.message_primary if error.sqlstate else None
    text = primary or "; ".join(line.strip() for line in str(error).splitlines() if line.strip())
    if isinstance(error, psycopg.errors.InvalidSchemaName):
        text += " (the schema the URL's search_path names does not exist: create it first)"
    return redact(text)


class PgRow:
    """A row by column position or by name, as sqlite3.Row reads."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str, /) -> Any:
        return self._values[key if isinstance(key, int) else self._index[key]]


def _rows(cursor: psycopg.AsyncCursor[Any]) -> RowMaker[PgRow]:
    index = {column.name: i for i, column in enumerate(cursor.description or ())}
    return functools.partial(PgRow, index=index)


@functools.lru_cache(maxsize=4096)
def _dialect_sql(sql: str, lock: str) -> str:
    """The shared SQL with psycopg's placeholders, and the row lock if any."""
    converted = sql.replace("%", "%%").replace("?", "%s")
    return f"{converted} {lock}" if lock else converted


def _violation(error: psycopg.Error) -> ConstraintViolationError:
    if isinstance(error, psycopg.errors.UniqueViolation):
        return ConstraintViolationError("unique", describe(error))
    if isinstance(error, psycopg.errors.ForeignKeyViolation):
        return ConstraintViolationError("foreign_key", describe(error))
    if isinstance(error, psycopg.errors.CheckViolation):
        return ConstraintViolationError(
            "other", f"CHECK constraint failed: {error.diag.constraint_name}"
        )
    return ConstraintViolationError("other", describe(error))


async def _drive(conn: psycopg.AsyncConnection[Any], steps: Steps[_T]) -> _T:
    async with conn.cursor(row_factory=_rows) as cursor:
        try:
            query = next(steps)
            while True:
                sql = _dialect_sql(query.sql, query.lock)
                try:
                    if query.many:
                        await cursor.executemany(sql, query.params)
                    else:
                        await cursor.execute(sql, query.params)
                    rows = await cursor.fetchall() if cursor.description is not None else []
                except (psycopg.IntegrityError, psycopg.DataError) as e:
                    query = steps.throw(_violation(e))
                else:
                    query = steps.send(Result(rows, cursor.rowcount))
        except StopIteration as done:
            value: _T = done.value
            return value


async def _call(pool: AsyncConnectionPool[Any], mode: Mode, steps: Steps[_T]) -> _T:
    try:
        async with pool.connection() as conn:
            if mode == READ:  # each statement on its own: the pool's connections autocommit
                return await _drive(conn, steps)
            async with conn.transaction():
                if mode == SNAPSHOT:
                    await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                return await _drive(conn, steps)
    except psycopg.OperationalError as e:  # a lost connection, no free one in time, a deadlock
        raise UnavailableError(f"the database is unavailable: {describe(e)}") from e


async def migrate(
    conn: psycopg.AsyncConnection[Any],
    pending: Sequence[migrations.Migration] = migrations.MIGRATIONS,
) -> int:
    """Apply the pending migrations, each in its own transaction; return the schema version."""

    async def run(steps: Steps[_T]) -> _T:
        async with conn.transaction():
            return await _drive(conn, steps)

    found = await run(migrations.prepare("postgresql", pending))
    for migration in pending:
        if migration.version > found:
            await run(migrations.apply(migration, "postgresql"))
    return await run(migrations.current_version())


def check_url(url: str) -> None:
    """Raise ConfigError unless `url` parses as a PostgreSQL URL; connects to nothing."""
    try:
        psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.Error as e:
        raise ConfigError(f"database: {redact(url)!r} is not a valid URL: {describe(e)}") from e


def connection_options(url: str) -> dict[str, Any]:
    """What every connection of the storage sets, unless the URL sets it itself."""
    given = psycopg.conninfo.conninfo_to_dict(url)
    defaults = {
        "connect_timeout": str(CONNECT_TIMEOUT_S),
        "application_name": application_name(),
        **_CLIENT_KEEPALIVE,
    }
    return {"autocommit": True} | {k: v for k, v in defaults.items() if k not in given}


def application_name() -> str:
    """`model-registry HOST PID`: tells the replicas' sessions apart in `pg_stat_activity`."""
    return f"model-registry {socket.gethostname()} {os.getpid()}"[:APPLICATION_NAME_MAX]


async def connect(url: str) -> psycopg.AsyncConnection[Any]:
    """One autocommitting connection; ConfigError with the server's reason if there is none."""
    try:
        return await psycopg.AsyncConnection.connect(url, **connection_options(url))
    except psycopg.Error as e:
        raise ConfigError(f"{redact(url)}: cannot connect: {describe(e)}") from e


class PostgresStorage(SQLStorage):
    """`Storage` on a PostgreSQL database, with a pool of connections."""

    def __init__(self, url: str, *, pool_wait_s: float = POOL_WAIT_S) -> None:
        check_url(url)
        self.url = url
        self.pool_wait_s = pool_wait_s
        self._pool: AsyncConnectionPool[Any] | None = None
        self._calls: set[asyncio.Future[Any]] = set()
        self._duty_conn: psycopg.AsyncConnection[Any] | None = None
        self._duties: set[str] = set()
        self._duty_guard = asyncio.Lock()

    def __repr__(self) -> str:
        return f"PostgresStorage({redact(self.url)})"

    async def open(self) -> None:
        """Connect, apply pending migrations and fill the pool; a second call does nothing."""
        if self._pool is not None:
            return
        conn = await connect(self.url)
        try:
            await migrate(conn)
        except ConfigError as e:
            raise ConfigError(f"{redact(self.url)}: {e}") from e
        except psycopg.Error as e:
            message = f"{redact(self.url)}: not a usable registry database: {describe(e)}"
            raise ConfigError(message) from e
        finally:
            await conn.close()
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            self.url,
            min_size=1,
            max_size=POOL_SIZE,
            kwargs=connection_options(self.url),
            # A connection the server dropped (a restart, a failover) is replaced, not used.
            check=AsyncConnectionPool.check_connection,
            timeout=self.pool_wait_s,
            open=False,
        )
        try:
            await pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as e:
            await pool.close()
            raise ConfigError(f"{redact(self.url)}: cannot connect: {describe(e)}") from e
        self._pool = pool

    async def close(self) -> None:
        """Let running calls finish, release the duties and close every connection."""
        pool = self._pool
        if pool is None:
            return
        self._pool = None  # later calls fail at once
        if self._calls:
            await asyncio.gather(*self._calls, return_exceptions=True)
        async with self._duty_guard:
            await self._drop_duties()
        await pool.close()

    async def _run(
        self, mode: Mode, steps: Callable[_P, Steps[_T]], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run the steps on a pooled connection, in a task of their own, and return the result."""
        if self._pool is None:
            raise RuntimeError(f"{self!r} is not open")
        call = asyncio.ensure_future(_call(self._pool, mode, steps(*args, **kwargs)))
        self._calls.add(call)
        call.add_done_callback(_forget(self._calls))
        return await asyncio.shield(call)

    async def acquire_duty(self, name: str) -> bool:
        """Hold or take the advisory lock of duty `name` on the duty connection."""
        if self._pool is None:
            raise RuntimeError(f"{self!r} is not open")
        async with self._duty_guard:
            try:
                if self._duty_conn is None or self._duty_conn.closed:
                    await self._drop_duties()
                    self._duty_conn = await connect(self.url)
                    await self._duty_conn.execute(_SERVER_KEEPALIVE)
                if name in self._duties:
                    await self._duty_conn.execute("SELECT 1")  # the lock lives with the session
                    return True
                cursor = await self._duty_conn.execute(_TRY_DUTY, (name,))
                row = await cursor.fetchone()
            except (psycopg.Error, ConfigError) as e:
                log.warning("duty %r: lost the database connection (%s)", name, e)
                await self._drop_duties()
                return False
            if row is not None and row[0]:
                self._duties.add(name)
                return True
            return False

    async def _drop_duties(self) -> None:
        """Close the duty connection: the server releases every lock it held."""
        conn, self._duty_conn = self._duty_conn, None
        self._duties.clear()
        if conn is not None:
            await conn.close()


def _forget(calls: set[asyncio.Future[Any]]) -> Callable[[asyncio.Future[Any]], None]:
    def done(call: asyncio.Future[Any]) -> None:
        calls.discard(call)
        if not call.cancelled():
            call.exception()  # retrieved: the caller may have been cancelled and never will

    return done


def probe(url: str) -> None:
    """Connect once and check the schema version, for check-config; ConfigError if unusable."""
    try:
        with psycopg.connect(url, **connection_options(url)) as conn:
            exists = conn.execute("SELECT to_regclass('schema_version') IS NOT NULL").fetchone()
            if exists is None or not exists[0]:
                return  # serve creates the schema
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    except psycopg.Error as e:
        raise ConfigError(f"{redact(url)}: cannot connect: {describe(e)}") from e
    try:
        migrations.check_known(int(row[0] or 0) if row else 0)
    except ConfigError as e:
        raise ConfigError(f"{redact(url)}: {e}") from e
