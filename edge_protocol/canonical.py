"""Canonical JSON: the exact bytes that signatures cover.

Rules (docs/protocol.md, "Canonical JSON"): objects with string keys sorted by code point,
no insignificant whitespace, UTF-8 output with only `"`, `\\` and control characters escaped,
integers in the signed 64-bit range, and no floats at all, so that every implementation
produces the same bytes for the same value.
"""

from __future__ import annotations

import json
from typing import Any

from edge_protocol.errors import CanonicalJSONError

INT_MIN = -(2**63)
INT_MAX = 2**63 - 1
MAX_DEPTH = 32  # metadata nests at most a handful of levels; deeper input is hostile


def canonical_bytes(value: Any) -> bytes:
    """Return the canonical JSON encoding of `value`, refusing anything not representable."""
    _check_value(value, path="$", depth=0)
    text = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate slipped through a key or a string
        raise CanonicalJSONError(f"string is not valid Unicode: {e.reason}") from e


def parse_json(data: bytes) -> Any:
    """Parse JSON bytes strictly: UTF-8, no floats, no NaN/Infinity, no duplicate keys."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CanonicalJSONError(f"document is not UTF-8: {e.reason} at byte {e.start}") from e
    try:
        value = json.loads(
            text,
            parse_float=_refuse_float,
            parse_constant=_refuse_constant,
            object_pairs_hook=_object_without_duplicates,
        )
    except RecursionError as e:
        raise CanonicalJSONError("document nests too deeply") from e
    except json.JSONDecodeError as e:
        raise CanonicalJSONError(f"not JSON: {e.msg} at line {e.lineno} column {e.colno}") from e
    _check_value(value, path="$", depth=0)
    return value


def _check_value(value: Any, *, path: str, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CanonicalJSONError(f"{path}: nests deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise CanonicalJSONError(f"{path}: integer {value} is outside the signed 64-bit range")
        return
    if isinstance(value, float):
        raise CanonicalJSONError(
            f"{path}: floats are not allowed in signed content; use a string or scaled integer"
        )
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise CanonicalJSONError(f"{path}: object key {key!r} is not a string")
            _check_value(item, path=f"{path}.{key}", depth=depth + 1)
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check_value(item, path=f"{path}[{index}]", depth=depth + 1)
        return
    raise CanonicalJSONError(f"{path}: {type(value).__name__} is not a JSON value")


def _refuse_float(literal: str) -> Any:
    raise CanonicalJSONError(f"float {literal} is not allowed in signed content")


def _refuse_constant(literal: str) -> Any:
    raise CanonicalJSONError(f"{literal} is not a JSON value")


def _object_without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys would let two parsers see two different documents behind one signature.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise CanonicalJSONError(f"duplicate object key {key!r}")
        result[key] = value
    return result
