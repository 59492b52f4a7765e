"""API tokens: random bearer secrets of which only the SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets

from model_registry.errors import InvalidInputError
from model_registry.storage.base import ROLES

TOKEN_PREFIX = "mr_"  # noqa: S105 - a public prefix


def generate_token() -> str:
    """Return a new random token (256 bits of entropy)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Return the stored form of a token.

    A plain SHA-256 suffices: tokens are random, so there is nothing for a slow hash to protect.
    """
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_role(role: str) -> str:
    """Return `role` if it is one of viewer, publisher, admin."""
    if role not in ROLES:
        raise InvalidInputError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return role


def role_allows(role: str, required: str) -> bool:
    """Return whether `role` is at least `required` (viewer < publisher < admin)."""
    return ROLES.index(role) >= ROLES.index(required)
