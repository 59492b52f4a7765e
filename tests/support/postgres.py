"""A schema of its own on the PostgreSQL server for each test, dropped afterwards.

The server is not started here: it listens on 127.0.0.1:5432 on the development machines and
in CI (scripts/ensure-postgres.sh checks it); `TEST_POSTGRES_URL` points elsewhere. Schema
names carry the pid and the creation time, so the schemas of a test process that died are
recognised and dropped by a later run once they are an hour old.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
SCHEMA_PREFIX = "registry_test_"
STALE_AFTER_S = 3600
_SCHEMA = re.compile(rf"^{SCHEMA_PREFIX}(\d+)_(\d+)_\d+$")
_numbers = itertools.count(1)


class PostgresUnavailableError(RuntimeError):
    """The test server cannot be reached; the message says where and why."""


def server_url() -> str:
    """The URL of the test database."""
    return os.environ.get("TEST_POSTGRES_URL", DEFAULT_URL)


def schema_url(schema: str, url: str | None = None) -> str:
    """`url` with its search path set to `schema` (libpq's `options`)."""
    base = url or server_url()
    return f"{base}{'&' if '?' in base else '?'}options=-csearch_path%3D{schema}"


def connect(url: str | None = None) -> psycopg.Connection[Any]:
    """An autocommitting connection to the test database; PostgresUnavailableError if none."""
    target = url or server_url()
    try:
        return psycopg.connect(target, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        reason = " ".join(str(e).split())
        raise PostgresUnavailableError(
            f"PostgreSQL is not reachable at {target} ({reason}); the storage tests run on "
            "both backends: start it (scripts/ensure-postgres.sh), or set TEST_POSTGRES_URL"
        ) from e


def drop_stale_schemas(conn: psycopg.Connection[Any], now: float | None = None) -> list[str]:
    """Drop the test schemas created over an hour ago (by runs that died); return them."""
    cutoff = (now if now is not None else time.time()) - STALE_AFTER_S
    names = conn.execute(
        "SELECT nspname FROM pg_namespace WHERE starts_with(nspname, %s)", (SCHEMA_PREFIX,)
    ).fetchall()
    stale = []
    for (name,) in names:
        found = _SCHEMA.match(name)
        if found is not None and int(found.group(2)) < cutoff:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
            stale.append(name)
    return stale


@dataclass(frozen=True)
class Schema:
    """A test's schema: its name and the URL whose connections use it."""

    name: str
    url: str

    def count(self, table: str) -> int:
        """Rows of `table`, through a connection of its own, as another process sees them."""
        with connect(self.url) as conn:
            query = sql.SQL("SELECT COUNT(*) FROM {}").format(sql.Identifier(table))
            row = conn.execute(query).fetchone()
        return int(row[0]) if row else 0

    def execute(self, statement: str, params: tuple[Any, ...] = ()) -> None:
        """Run one statement in the schema, from outside the storage."""
        with connect(self.url) as conn:
            conn.execute(statement.encode(), params)  # bytes: a test's own literal SQL


@contextmanager
def new_schema() -> Iterator[Schema]:
    """Create a uniquely named schema; drop it, with everything in it, at the end."""
    name = f"{SCHEMA_PREFIX}{os.getpid()}_{int(time.time())}_{next(_numbers)}"
    with connect() as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        yield Schema(name, schema_url(name))
    finally:
        with connect() as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name)))
