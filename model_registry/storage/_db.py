"""SQLite plumbing shared by the storage modules: transactions, times, JSON, constraint errors."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from model_registry.errors import ConflictError, InvalidInputError, RegistryError

# Fixed width with microseconds and "Z": the text sorts in time order, so indexes and range
# queries on time columns work on plain TEXT in SQLite.
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_DUPLICATE_KEY = frozenset({"SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE"})


@contextmanager
def transaction(conn: sqlite3.Connection, *, write: bool = True) -> Iterator[sqlite3.Connection]:
    """Run the block in one transaction: commit on success, roll back on any exception."""
    # IMMEDIATE takes the write lock up front, so a read-then-write block cannot fail half-way
    # with SQLITE_BUSY when another process writes the same file.
    conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def to_text(moment: datetime) -> str:
    """Return the stored form of an aware datetime, in UTC."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidInputError(f"datetime {moment.isoformat()} has no time zone")
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


def from_text(text: str) -> datetime:
    """Return the aware UTC datetime a time column holds."""
    return datetime.strptime(text, _TIME_FORMAT).replace(tzinfo=UTC)


def optional_from_text(text: str | None) -> datetime | None:
    """Like `from_text`, passing NULL through."""
    return None if text is None else from_text(text)


def dumps(value: dict[str, Any]) -> str:
    """Return the stored JSON of a dict; raises InvalidInputError if it is not JSON."""
    try:
        # No NaN or Infinity: they are not JSON, and PostgreSQL's jsonb refuses them.
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"cannot store as JSON: {e}") from e


def loads(text: str) -> dict[str, Any]:
    """Return the dict a JSON column holds."""
    value = json.loads(text)
    if not isinstance(value, dict):
        raise TypeError(f"JSON column holds {type(value).__name__}, not an object")
    return value


def exists(conn: sqlite3.Connection, query: str, params: tuple[Any, ...]) -> bool:
    """Return whether `query` finds at least one row."""
    return conn.execute(query, params).fetchone() is not None


def constraint_error(error: sqlite3.IntegrityError, duplicate: str) -> RegistryError:
    """Translate a constraint failure: a duplicate key is a conflict, anything else bad input."""
    if error.sqlite_errorname in _DUPLICATE_KEY:
        return ConflictError(duplicate)
    return InvalidInputError(f"rejected by the database: {error}")


def is_foreign_key(error: sqlite3.IntegrityError) -> bool:
    """Return whether the failure is a reference to a row that does not exist."""
    return error.sqlite_errorname == "SQLITE_CONSTRAINT_FOREIGNKEY"
