"""API tokens, of which only the SHA-256 is stored, as steps both backends run (see `_db`).

Each function yields its statements; the caller picks the transaction (`SQLStorage`), so an
error leaves nothing stored.
"""

from __future__ import annotations

from datetime import datetime

from model_registry.errors import ConflictError, InvalidInputError, NotFoundError
from model_registry.storage._db import (
    ConstraintViolationError,
    Query,
    Row,
    Steps,
    constraint_error,
    from_text,
    optional_from_text,
    to_text,
)
from model_registry.storage.base import ROLES, TokenRecord


def add_token(name: str, role: str, token_hash: str, created: datetime) -> Steps[int]:
    """Store a token hash and return its id; ConflictError if the hash is stored already."""
    if role not in ROLES:
        raise InvalidInputError(f"role {role!r} is not one of {', '.join(ROLES)}")
    try:
        result = yield Query(
            "INSERT INTO tokens (name, role, token_hash, created) VALUES (?, ?, ?, ?)"
            " RETURNING token_id",
            (name, role, token_hash, to_text(created)),
        )
    except ConstraintViolationError as e:
        # Never echo the hash: it is as good as the token for finding it in logs.
        raise constraint_error(e, "a token with this hash is already stored") from e
    return int(result.rows[0][0])


_SELECT_TOKENS = "SELECT token_id, name, role, created, last_used FROM tokens"


def find_token(token_hash: str) -> Steps[TokenRecord | None]:
    """Return the token with this hash, or None."""
    row = (yield Query(_SELECT_TOKENS + " WHERE token_hash = ?", (token_hash,))).one()
    return None if row is None else _token(row)


def tokens() -> Steps[list[TokenRecord]]:
    """Return every token, by id."""
    result = yield Query(_SELECT_TOKENS + " ORDER BY token_id")
    return [_token(row) for row in result.rows]


def touch_token(token_id: int, used: datetime) -> Steps[None]:
    """Record that the token was used at `used` (nothing happens for an unknown id)."""
    yield Query("UPDATE tokens SET last_used = ? WHERE token_id = ?", (to_text(used), token_id))


def remove_token(token_id: int) -> Steps[TokenRecord]:
    """Delete a token and return it; NotFoundError, or ConflictError for the last admin token."""
    # Lock every admin token first, always in the same order: two removals of the last two
    # admins then run one after the other and the second sees one left, without a deadlock.
    admins = yield Query(
        "SELECT token_id FROM tokens WHERE role = 'admin' ORDER BY token_id", lock="FOR UPDATE"
    )
    row = (yield Query(_SELECT_TOKENS + " WHERE token_id = ?", (token_id,))).one()
    if row is None:
        raise NotFoundError(f"no token {token_id}")
    token = _token(row)
    if token.role == "admin" and len(admins.rows) <= 1:
        raise ConflictError(
            f"token {token_id} ({token.name!r}) is the last admin token; create another "
            "admin token first, or nobody could manage the registry through its API"
        )
    yield Query("DELETE FROM tokens WHERE token_id = ?", (token_id,))
    return token


def _token(row: Row) -> TokenRecord:
    return TokenRecord(
        row["token_id"],
        row["name"],
        row["role"],
        from_text(row["created"]),
        optional_from_text(row["last_used"]),
    )
