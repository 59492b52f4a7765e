"""Merging the count fields of telemetry: numbers add, lists add element by element, objects
merge by key. What devices count (predicted classes, bins, experiment outcomes) is kept in
this shape so that intervals, devices and time buckets combine exactly."""

from __future__ import annotations

import math
from typing import Any

MAX_DEPTH = 6
MAX_LABEL = 256


class CountsMismatchError(ValueError):
    """Two count fields of different shapes (a list of another length, a number and a list)."""


def merge_counts(a: dict[str, Any], b: dict[str, Any], where: str = "") -> dict[str, Any]:
    """Return the sum of two count objects; neither is changed.

    Raises CountsMismatchError naming the field (`bins.X[0]`) whose shapes differ.
    """
    merged = dict(a)
    for key, value in b.items():
        path = f"{where}.{key}" if where else key
        merged[key] = _merge(merged[key], value, path) if key in merged else value
    return merged


def is_counts(value: object, depth: int = 0) -> bool:
    """Whether `value` is made only of finite non-negative numbers, lists and objects of them.

    Ingest keeps only such fields as a point's detail, so a hostile report cannot make a merge
    fail later or a window go negative. Strings are allowed as the values of `output`-like
    labels (a merge keeps them when they are equal).
    """
    if depth > MAX_DEPTH or isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return 0 <= value < math.inf
    if isinstance(value, str):
        return len(value) <= MAX_LABEL
    if isinstance(value, list):
        return all(is_counts(v, depth + 1) for v in value)
    return isinstance(value, dict) and all(
        isinstance(k, str) and is_counts(v, depth + 1) for k, v in value.items()
    )


def _merge(a: Any, b: Any, where: str) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        return merge_counts(a, b, where)
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            raise CountsMismatchError(f"{where}: {len(a)} counts against {len(b)}")
        return [_merge(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b, strict=True))]
    if isinstance(a, str) or isinstance(b, str):
        if a != b:
            raise CountsMismatchError(f"{where}: {a!r} against {b!r}")
        return a
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a + b
    raise CountsMismatchError(f"{where}: {type(a).__name__} against {type(b).__name__}")
