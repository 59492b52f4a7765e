"""The dashboard's reads and the history's rows, as steps both backends run (see `_db`).

Resource points are stored with the telemetry report they come from (`_fleet.add_reports`)
and later merged into coarser buckets by the history duty (`services/history.py`), which reads
a slice, merges it and replaces it here in one transaction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from model_registry.storage._db import Query, Row, Steps, from_text, to_text
from model_registry.storage.history_records import ResourcePoint

IN_CLAUSE_LIMIT = 500  # ids bound in one IN (...), well below both drivers' limits
_POINT_COLUMNS = (
    "device_id, at, interval_s, reports, rss_bytes, rss_reports, cpu_seconds,"
    " disk_free_bytes, disk_total_bytes, disk_reports"
)
# Built from the constant column list above, never from input.
_INSERT_POINT = f"INSERT INTO resource_points ({_POINT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)"  # noqa: S608
_SELECT_POINTS = f"SELECT {_POINT_COLUMNS} FROM resource_points"  # noqa: S608


def reported_interval(state: dict[str, Any]) -> float | None:
    """The state's `telemetry_interval_s` when it is a finite number (the fleet rules judge it)."""
    value = state.get("telemetry_interval_s")
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def add_resource_point(point: ResourcePoint) -> Steps[None]:
    """Store one resource point."""
    yield Query(_INSERT_POINT, _point_values(point))


def resource_points(
    since: datetime, until: datetime, device_ids: Sequence[str] | None
) -> Steps[list[ResourcePoint]]:
    """Return the points with `since <= at < until`, of `device_ids` or of every device."""
    span = (to_text(since), to_text(until))
    if device_ids is None:
        result = yield Query(_SELECT_POINTS + " WHERE at >= ? AND at < ? ORDER BY at", span)
        return [_point(row) for row in result.rows]
    points: list[ResourcePoint] = []
    for chunk in _chunks(device_ids):
        marks = ",".join("?" * len(chunk))
        result = yield Query(
            _SELECT_POINTS + f" WHERE at >= ? AND at < ? AND device_id IN ({marks})",
            (*span, *chunk),
        )
        points += [_point(row) for row in result.rows]
    points.sort(key=lambda p: (p.at, p.device_id))
    return points


def replace_resource_points(
    since: datetime, until: datetime, device_ids: Sequence[str], points: Sequence[ResourcePoint]
) -> Steps[None]:
    """Delete the devices' points in [since, until) and store `points` (one transaction)."""
    span = (to_text(since), to_text(until))
    for chunk in _chunks(device_ids):
        marks = ",".join("?" * len(chunk))
        yield Query(
            "DELETE FROM resource_points"  # noqa: S608 - only "?"
            f" WHERE at >= ? AND at < ? AND device_id IN ({marks})",
            (*span, *chunk),
        )
    if points:
        yield Query(_INSERT_POINT, [_point_values(p) for p in points], many=True)


def prune_resource_points(older_than: datetime) -> Steps[int]:
    """Delete resource points before `older_than`; return how many went."""
    result = yield Query("DELETE FROM resource_points WHERE at < ?", (to_text(older_than),))
    return result.rowcount


def history_mark(name: str) -> Steps[datetime | None]:
    """Return how far the compaction `name` has got."""
    row = (yield Query("SELECT done_until FROM history_marks WHERE name = ?", (name,))).one()
    return None if row is None else from_text(row[0])


def set_history_mark(name: str, done_until: datetime) -> Steps[None]:
    """Record how far the compaction `name` has got (one row per name)."""
    yield Query("DELETE FROM history_marks WHERE name = ?", (name,))
    yield Query(
        "INSERT INTO history_marks (name, done_until) VALUES (?, ?)", (name, to_text(done_until))
    )


def _chunks(ids: Sequence[str]) -> list[Sequence[str]]:
    return [ids[i : i + IN_CLAUSE_LIMIT] for i in range(0, len(ids), IN_CLAUSE_LIMIT)]


def _point_values(p: ResourcePoint) -> tuple[Any, ...]:
    return (
        *(p.device_id, to_text(p.at), p.interval_s, p.reports, p.rss_bytes, p.rss_reports),
        *(p.cpu_seconds, p.disk_free_bytes, p.disk_total_bytes, p.disk_reports),
    )


def _point(row: Row) -> ResourcePoint:
    return ResourcePoint(
        device_id=row["device_id"],
        at=from_text(row["at"]),
        interval_s=float(row["interval_s"]),
        reports=int(row["reports"]),
        rss_bytes=float(row["rss_bytes"]),
        rss_reports=int(row["rss_reports"]),
        cpu_seconds=float(row["cpu_seconds"]),
        disk_free_bytes=float(row["disk_free_bytes"]),
        disk_total_bytes=float(row["disk_total_bytes"]),
        disk_reports=int(row["disk_reports"]),
    )
