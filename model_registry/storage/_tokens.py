"""Synchronous SQLite operations on API tokens, of which only the SHA-256 is stored.

Each function takes the connection and runs on the storage's worker thread; every write is one
transaction, so an error leaves nothing stored.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime

from model_registry.errors import ConflictError, InvalidInputError, NotFoundError
from model_registry.storage._db import (
    constraint_error,
    from_text,
    optional_from_text,
    to_text,
    transaction,
)
from model_registry.storage.base import ROLES, TokenRecord


def add_token(
    conn: sqlite3.Connection, name: str, role: str, token_hash: str, created: datetime
) -> int:
    """Store a token hash and return its id; ConflictError if the hash is stored already."""
    if role not in ROLES:
        raise InvalidInputError(f"role {role!r} is not one of {', '.join(ROLES)}")
    values = (name, role, token_hash, to_text(created))
    with transaction(conn):
        try:
            row = conn.execute(
                "INSERT INTO tokens (name, role, token_hash, created) VALUES (?, ?, ?, ?)"
                " RETURNING token_id",
                values,
            ).fetchone()
        except sqlite3.IntegrityError as e:
            # Never echo the hash: it is as good as the token for finding it in logs.
            raise constraint_error(e, "a token with this hash is already stored") from e
    return int(row[0])


_SELECT_TOKENS = "SELECT token_id, name, role, created, last_used FROM tokens"


def find_token(conn: sqlite3.Connection, token_hash: str) -> TokenRecord | None:
    """Return the token with this hash, or None."""
    row = conn.execute(_SELECT_TOKENS + " WHERE token_hash = ?", (token_hash,)).fetchone()
    return None if row is None else _token(row)


def tokens(conn: sqlite3.Connection) -> list[TokenRecord]:
    """Return every token, by id."""
    return [_token(row) for row in conn.execute(_SELECT_TOKENS + " ORDER BY token_id")]


def touch_token(conn: sqlite3.Connection, token_id: int, used: datetime) -> None:
    """Record that the token was used at `used` (nothing happens for an unknown id)."""
    with transaction(conn):
        values = (to_text(used), token_id)
        conn.execute("UPDATE tokens SET last_used = ? WHERE token_id = ?", values)


def remove_token(conn: sqlite3.Connection, token_id: int) -> TokenRecord:
    """Delete a token and return it; NotFoundError, or ConflictError for the last admin token."""
    with transaction(conn):  # the write lock makes the count and the delete one step
        row = conn.execute(_SELECT_TOKENS + " WHERE token_id = ?", (token_id,)).fetchone()
        if row is None:
            raise NotFoundError(f"no token {token_id}")
        token = _token(row)
        if token.role == "admin":
            admins = conn.execute("SELECT COUNT(*) FROM tokens WHERE role = 'admin'").fetchone()
            if admins[0] <= 1:
                raise ConflictError(
                    f"token {token_id} ({token.name!r}) is the last admin token; create another "
                    "admin token first, or nobody could manage the registry through its API"
                )
        conn.execute("DELETE FROM tokens WHERE token_id = ?", (token_id,))
    return token


def _token(row: sqlite3.Row) -> TokenRecord:
    return TokenRecord(
        row["token_id"],
        row["name"],
        row["role"],
        from_text(row["created"]),
        optional_from_text(row["last_used"]),
    )
