"""What both storage backends share: the steps record logic yields, times, JSON, violations.

The record logic (`_catalog`, `_fleet`, `_tokens`, `migrations`) is written once, as generators
that yield a `Query` and receive its `Result`. A backend drives them inside the transaction the
caller asked for: SQLite synchronously on its worker thread, PostgreSQL with awaits on a pooled
connection. The SQL uses `?` placeholders and only syntax both dialects accept; the one thing
that differs, row locks, is `Query.lock`, which SQLite does not need (a write transaction there
holds the whole database).
"""

from __future__ import annotations

import json
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol, TypeVar

from model_registry.errors import ConflictError, InvalidInputError, RegistryError

# Fixed width with microseconds and "Z": the text sorts in time order, so indexes and range
# queries on time columns work on plain TEXT in both dialects.
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_T = TypeVar("_T")

# How a backend runs one call: each statement on its own, all of them reading one snapshot,
# or all of them as one write transaction.
Mode = Literal["read", "snapshot", "write"]
READ: Mode = "read"
SNAPSHOT: Mode = "snapshot"
WRITE: Mode = "write"


class Row(Protocol):
    """A result row, by column position or by name (sqlite3.Row, and the PostgreSQL rows)."""

    def __getitem__(self, key: int | str, /) -> Any: ...


@dataclass(frozen=True, slots=True)
class Query:
    """One statement with `?` placeholders, and what to bind to them."""

    sql: str
    params: Sequence[Any] = ()
    many: bool = False  # `params` is a sequence of parameter rows, run with executemany
    lock: str = ""  # a row lock PostgreSQL appends, such as "FOR UPDATE"


@dataclass(frozen=True, slots=True)
class Result:
    """What a statement returned, and how many rows it changed."""

    rows: Sequence[Row]
    rowcount: int

    def one(self) -> Row | None:
        """The first row, or None."""
        return self.rows[0] if self.rows else None


Steps = Generator[Query, Result, _T]

ViolationKind = Literal["unique", "foreign_key", "other"]


class ConstraintViolationError(InvalidInputError):
    """A statement broke a constraint; the backend throws it into the steps that ran it.

    After one, PostgreSQL has aborted the transaction: steps may translate it and raise, but
    must not run another statement.
    """

    def __init__(self, kind: ViolationKind, detail: str) -> None:
        super().__init__(f"rejected by the database: {detail}")
        self.kind = kind
        self.detail = detail


def constraint_error(error: ConstraintViolationError, duplicate: str) -> RegistryError:
    """Translate a violation: a duplicate key is a conflict, anything else bad input."""
    return ConflictError(duplicate) if error.kind == "unique" else error


def exists(sql: str, params: Sequence[Any]) -> Steps[bool]:
    """Return whether `sql` finds at least one row."""
    result = yield Query(sql, params)
    return bool(result.rows)


def to_text(moment: datetime) -> str:
    """Return the stored form of an aware datetime, in UTC."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise InvalidInputError(f"datetime {moment.isoformat()} has no time zone")
    return moment.astimezone(UTC).strftime(_TIME_FORMAT)


def from_text(text: str) -> datetime:
    """Return the aware UTC datetime a time column holds."""
    # fromisoformat reads the stored form (ISO-8601 ending in "Z") 40 times faster than
    # strptime, which counts when a listing reads the times of 10,000 devices.
    return datetime.fromisoformat(text).astimezone(UTC)


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
