"""Parsing request parameters and JSON bodies into clear 4xx errors.

Every number a client sends (a path segment, a query parameter, a JSON field) must be a plain
decimal that the database and the signed documents hold: 1 to 2**63 - 1. Strings are bounded,
lists too, and a JSON body may carry only the fields its route reads. An error quotes what it
refuses shortened and ASCII-escaped, so it cannot carry a megabyte or a control code back.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from model_registry.errors import InvalidInputError, TooLargeError, UnsupportedMediaError
from model_registry.services.deployments import Target

MAX_JSON_BYTES = 1024 * 1024
INT_MAX = 2**63 - 1
MAX_TEXT = 1024  # characters of a string field or query parameter
MAX_ITEMS = 10_000  # entries of a list field (the devices of a deployment)
_DECIMAL = re.compile(r"[0-9]{1,19}")  # ASCII digits only: int() also takes '٣' and ' 7_0'
# Control characters (C0, DEL, C1) and the bidi marks, overrides and isolates: none belongs in
# a name or label that terminals and dashboards show.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def show(value: object, limit: int = 60) -> str:
    """A short, ASCII-only rendering of a refused value, for an error message."""
    text = ascii(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip(text: str, limit: int = 120) -> str:
    """`text` ASCII-escaped and shortened, for quoting a library's error message."""
    escaped = ascii(text)[1:-1]
    return escaped if len(escaped) <= limit else escaped[: limit - 3] + "..."


async def json_body(request: web.Request, allowed: tuple[str, ...]) -> dict[str, Any]:
    """Return the request's JSON object body, refusing other content types, shapes and fields."""
    if request.content_type != "application/json":
        raise UnsupportedMediaError(f"send application/json, not {request.content_type!r}")
    raw = bytearray()
    while chunk := await request.content.read(64 * 1024):  # read() may return less than asked
        raw += chunk
        if len(raw) > MAX_JSON_BYTES:
            raise TooLargeError(f"JSON body larger than {MAX_JSON_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError) as e:  # ValueError: also an integer of 4300+ digits
        raise InvalidInputError(f"malformed JSON body: {clip(str(e))}") from e
    if not isinstance(body, dict):
        raise InvalidInputError("the JSON body must be an object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise InvalidInputError(
            f"unknown field {show(unknown[0])}: this route reads {', '.join(allowed)}"
        )
    return body


def int_param(text: str, name: str, *, maximum: int = INT_MAX) -> int:
    """Parse a positive integer path or query parameter of at most `maximum`."""
    if not _DECIMAL.fullmatch(text) or not 1 <= int(text) <= maximum:
        raise InvalidInputError(
            f"{name} must be a whole number from 1 to {maximum}, not {show(text)}"
        )
    return int(text)


def query_text(request: web.Request, name: str) -> str | None:
    """Return a query parameter given at most once and at most MAX_TEXT characters long."""
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise InvalidInputError(f"query parameter {name!r} is given {len(values)} times")
    if values and len(values[0]) > MAX_TEXT:
        raise InvalidInputError(f"query parameter {name!r} is longer than {MAX_TEXT} characters")
    return values[0] if values else None


def field(body: dict[str, Any], name: str, kind: type, *, required: bool = True) -> Any:
    """Return `body[name]` checked to be of `kind`, and bounded when a string or list."""
    if name not in body:
        if required:
            raise InvalidInputError(f"field {name!r} is required")
        return None
    value = body[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidInputError(f"field {name!r} must be {_KIND_NAMES.get(kind, kind.__name__)}")
    if isinstance(value, str) and len(value) > MAX_TEXT:
        raise InvalidInputError(f"field {name!r} is longer than {MAX_TEXT} characters")
    if isinstance(value, list) and len(value) > MAX_ITEMS:
        raise InvalidInputError(f"field {name!r} has more than {MAX_ITEMS} entries")
    return value


_KIND_NAMES = {str: "a string", int: "an integer", list: "a list", bool: "true or false"}


def printable_text(value: str, name: str, max_length: int) -> str:
    """Return `value` if it is at most `max_length` characters of printable text."""
    if len(value) > max_length:
        raise InvalidInputError(f"{name} must be at most {max_length} characters")
    if _UNPRINTABLE.search(value):
        raise InvalidInputError(f"{name} must be printable text: no control or bidi characters")
    return value


def positive_field(body: dict[str, Any], name: str) -> int:
    """Return a required integer field from 1 to 2**63 - 1."""
    value: int = field(body, name, int)
    if not 1 <= value <= INT_MAX:
        raise InvalidInputError(
            f"field {name!r} must be an integer from 1 to {INT_MAX}, not {show(value)}"
        )
    return value


def target_from(body: dict[str, Any]) -> Target:
    """Build a deployment target from `group` or `devices` fields."""
    group = field(body, "group", str, required=False)
    devices = field(body, "devices", list, required=False) or []
    if not all(isinstance(d, str) and len(d) <= MAX_TEXT for d in devices):
        raise InvalidInputError("field 'devices' must be a list of device ids")
    return Target(group=group, devices=tuple(devices))
