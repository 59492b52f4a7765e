"""Each telemetry report's numbers per (model, version): `points_from_telemetry`.

Reads `models.{m}.versions.{v}` of a report (docs/telemetry.md section 1). A part that is not
what the format says (a version that is not a positive integer, a negative count, a detail field
that is not made of counts) is left out of the points, never guessed at: the report itself is
stored as sent, as before.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from model_registry.statistics.counts import is_counts
from model_registry.storage.base import VersionPoint

# The per-version fields a point has columns for; every other field is detail.
_SCALARS = ("requests", "2xx", "4xx", "5xx", "rejected_503", "latency_ms")
UNKNOWN_MODEL = "_unknown"  # requests naming no served model (docs/telemetry.md)
MAX_VERSIONS_PER_MODEL = 16  # a device serves one version, two in an experiment
MAX_MODELS = 64
MAX_COUNT = 2**53  # beyond this a count is not one a device made (and leaves BIGINT's range)


def points_from_telemetry(
    device_id: str,
    received: datetime,
    body: Mapping[str, Any],
    left_out: Counter[str] | None = None,
) -> tuple[VersionPoint, ...]:
    """Return the points of one telemetry report, by model then version.

    `left_out` counts, by field name, the detail fields left out for not being counts (a
    negative bin count, a string where a number goes).
    """
    models = body.get("models")
    if not isinstance(models, dict):
        return ()
    interval = _number(body.get("interval_s"))
    points: list[VersionPoint] = []
    for model, report in list(models.items())[:MAX_MODELS]:
        if model == UNKNOWN_MODEL or not isinstance(report, dict):
            continue
        versions = report.get("versions")
        if not isinstance(versions, dict):
            continue
        for key, numbers in list(versions.items())[:MAX_VERSIONS_PER_MODEL]:
            version = _version(key)
            if version is not None and isinstance(numbers, dict):
                point = _point(
                    (model, version, device_id), received, interval or 0.0, numbers, left_out
                )
                if point is not None:
                    points.append(point)
    return tuple(points)


def _point(
    key: tuple[str, int, str],
    received: datetime,
    interval_s: float,
    numbers: dict[str, Any],
    left_out: Counter[str] | None = None,
) -> VersionPoint | None:
    counts = [_count(numbers.get(k)) for k in ("requests", "2xx", "4xx", "5xx", "rejected_503")]
    if any(c is None for c in counts):
        return None
    requests, ok, client_errors, server_errors, rejected = (c or 0 for c in counts)
    latency = numbers.get("latency_ms")
    latency = latency if isinstance(latency, dict) else {}
    samples = _count(latency.get("samples")) or 0
    detail = {k: v for k, v in numbers.items() if k not in _SCALARS and is_counts(v)}
    if left_out is not None:
        left_out.update(k for k in numbers if k not in _SCALARS and k not in detail)
    model, version, device_id = key
    return VersionPoint(
        model=model,
        version=version,
        device_id=device_id,
        at=received,
        interval_s=interval_s,
        requests=requests,
        ok=ok,
        client_errors=client_errors,
        server_errors=server_errors,
        rejected=rejected,
        latency_samples=samples,
        latency_p50_ms=_number(latency.get("p50")) if samples else None,
        latency_p99_ms=_number(latency.get("p99")) if samples else None,
        latency_max_ms=_number(latency.get("max")) if samples else None,
        detail=detail,
    )


def _version(key: object) -> int | None:
    if not isinstance(key, str) or not key.isdecimal() or len(key) > 9:
        return None
    version = int(key)
    return version if version >= 1 else None


def _count(value: object) -> int | None:
    """A count: 0 when absent, None when present but not a non-negative integer."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        return None
    return value


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if number >= 0 and number != float("inf") else None
