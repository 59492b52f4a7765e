"""Version points: each telemetry report's numbers per (model, version), as steps both
backends run. Written with the report they came from (`_fleet.add_reports`), read as windows by
`model_registry.statistics`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from model_registry.storage._db import Query, Row, Steps, dumps, from_text, loads, to_text
from model_registry.storage.base import VersionPoint

_COLUMNS = (
    "model, version, device_id, at, interval_s, requests, ok, client_errors, server_errors,"
    " rejected, latency_samples, latency_p50_ms, latency_p99_ms, latency_max_ms, detail, reports"
)
_INSERT = (
    f"INSERT INTO version_points ({_COLUMNS})"  # noqa: S608 - a constant
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_DEVICES_PER_QUERY = 500  # ids per `IN (...)`, far below SQLite's bound on parameters


def add_points(points: Sequence[VersionPoint]) -> Steps[None]:
    """Insert points (with the report that carried them)."""
    if points:
        yield Query(_INSERT, [_values(p) for p in points], many=True)


def version_points(
    model: str,
    since: datetime,
    until: datetime | None,
    version: int | None,
    device_ids: Sequence[str] | None,
) -> Steps[list[VersionPoint]]:
    """Return the model's points received in [since, until), oldest first."""
    where, params = _window(model, since, until, version)
    if device_ids is None:
        return (yield from _select(where, params))
    found: list[VersionPoint] = []
    ids = sorted(set(device_ids))
    for start in range(0, len(ids), _DEVICES_PER_QUERY):
        chunk = ids[start : start + _DEVICES_PER_QUERY]
        marks = ",".join("?" * len(chunk))
        found += yield from _select(f"{where} AND device_id IN ({marks})", [*params, *chunk])
    found.sort(key=lambda p: p.at)
    return found


def device_points(
    since: datetime, until: datetime, device_ids: Sequence[str]
) -> Steps[list[VersionPoint]]:
    """Return every model's points of these devices received in [since, until), by time."""
    found: list[VersionPoint] = []
    ids = sorted(set(device_ids))
    for start in range(0, len(ids), _DEVICES_PER_QUERY):
        chunk = ids[start : start + _DEVICES_PER_QUERY]
        marks = ",".join("?" * len(chunk))
        where = f"at >= ? AND at < ? AND device_id IN ({marks})"
        found += yield from _select(where, [to_text(since), to_text(until), *chunk])
    found.sort(key=lambda p: p.at)
    return found


def replace_points(
    since: datetime, until: datetime, device_ids: Sequence[str], points: Sequence[VersionPoint]
) -> Steps[None]:
    """Delete the devices' points in [since, until) and store `points` (the history duty's
    merge, in one transaction)."""
    ids = sorted(set(device_ids))
    for start in range(0, len(ids), _DEVICES_PER_QUERY):
        chunk = ids[start : start + _DEVICES_PER_QUERY]
        marks = ",".join("?" * len(chunk))
        yield Query(
            "DELETE FROM version_points"  # noqa: S608 - only "?"
            f" WHERE at >= ? AND at < ? AND device_id IN ({marks})",
            [to_text(since), to_text(until), *chunk],
        )
    yield from add_points(points)


def prune_points(older_than: datetime) -> Steps[int]:
    """Delete points received before `older_than`; return how many."""
    result = yield Query("DELETE FROM version_points WHERE at < ?", (to_text(older_than),))
    return result.rowcount


def _window(
    model: str, since: datetime, until: datetime | None, version: int | None
) -> tuple[str, list[object]]:
    where = "model = ? AND at >= ?"
    params: list[object] = [model, to_text(since)]
    if until is not None:
        where, params = f"{where} AND at < ?", [*params, to_text(until)]
    if version is not None:
        where, params = f"{where} AND version = ?", [*params, version]
    return where, params


def _select(where: str, params: Sequence[object]) -> Steps[list[VersionPoint]]:
    # `where` is built above from constants; every value is a bound parameter.
    sql = f"SELECT {_COLUMNS} FROM version_points WHERE {where} ORDER BY at, point_id"  # noqa: S608
    result = yield Query(sql, params)
    return [_point(row) for row in result.rows]


def _values(p: VersionPoint) -> tuple[object, ...]:
    return (
        p.model,
        p.version,
        p.device_id,
        to_text(p.at),
        p.interval_s,
        p.requests,
        p.ok,
        p.client_errors,
        p.server_errors,
        p.rejected,
        p.latency_samples,
        p.latency_p50_ms,
        p.latency_p99_ms,
        p.latency_max_ms,
        dumps(p.detail),
        p.reports,
    )


def _point(row: Row) -> VersionPoint:
    return VersionPoint(
        model=row["model"],
        version=int(row["version"]),
        device_id=row["device_id"],
        at=from_text(row["at"]),
        interval_s=float(row["interval_s"]),
        requests=int(row["requests"]),
        ok=int(row["ok"]),
        client_errors=int(row["client_errors"]),
        server_errors=int(row["server_errors"]),
        rejected=int(row["rejected"]),
        latency_samples=int(row["latency_samples"]),
        latency_p50_ms=_optional_float(row["latency_p50_ms"]),
        latency_p99_ms=_optional_float(row["latency_p99_ms"]),
        latency_max_ms=_optional_float(row["latency_max_ms"]),
        detail=loads(row["detail"]),
        reports=int(row["reports"]),
    )


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]
