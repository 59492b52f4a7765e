"""Parsing request parameters and JSON bodies into clear 4xx errors."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from model_registry.errors import InvalidInputError, UnsupportedMediaError
from model_registry.services.deployments import Target

MAX_JSON_BYTES = 1024 * 1024


async def json_body(request: web.Request) -> dict[str, Any]:
    """Return the request's JSON object body, refusing other content types and shapes."""
    if request.content_type != "application/json":
        raise UnsupportedMediaError(f"send application/json, not {request.content_type!r}")
    raw = await request.content.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise InvalidInputError(f"JSON body larger than {MAX_JSON_BYTES} bytes")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidInputError(f"malformed JSON body: {e}") from e
    if not isinstance(body, dict):
        raise InvalidInputError("the JSON body must be an object")
    return body


def int_param(text: str, name: str) -> int:
    """Parse a positive integer path or query parameter."""
    if not text.isdigit() or int(text) < 1:
        raise InvalidInputError(f"{name} must be a positive integer, not {text!r}")
    return int(text)


def field(body: dict[str, Any], name: str, kind: type, *, required: bool = True) -> Any:
    """Return `body[name]` checked to be of `kind`."""
    if name not in body:
        if required:
            raise InvalidInputError(f"field {name!r} is required")
        return None
    value = body[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise InvalidInputError(f"field {name!r} must be {kind.__name__}")
    return value


def positive_field(body: dict[str, Any], name: str) -> int:
    """Return a required positive integer field."""
    value: int = field(body, name, int)
    if value < 1:
        raise InvalidInputError(f"field {name!r} must be a positive integer")
    return value


def target_from(body: dict[str, Any]) -> Target:
    """Build a deployment target from `group` or `devices` fields."""
    group = field(body, "group", str, required=False)
    devices = field(body, "devices", list, required=False) or []
    if not all(isinstance(d, str) for d in devices):
        raise InvalidInputError("field 'devices' must be a list of device ids")
    return Target(group=group, devices=tuple(devices))
