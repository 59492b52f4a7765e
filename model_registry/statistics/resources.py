"""A device's resource use (RSS, CPU, disk) as sum-mergeable points, and series for charts.

Ingest turns each telemetry report's `resources` object (docs/telemetry.md) into one
`ResourcePoint`; storage keeps it with the report. Every number of a point is a sum, so any
set of points merges by adding, whatever buckets compaction made of them: a chart's step
reads the same before and after the history duty compacts the rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from model_registry.statistics.buckets import bucket_start
from model_registry.storage import ResourcePoint, Storage

MAX_BYTES = float(2**62)  # beyond any real memory or disk: a report claiming more is not believed
MAX_INTERVAL_S = 86_400.0  # the agent's own bound on its reporting interval


@dataclass(frozen=True)
class ResourceSample:
    """One step of a device's resource series: means over the reports in it."""

    at: datetime
    reports: int
    rss_bytes: float | None  # mean resident set size
    cpu_percent: float | None  # CPU seconds over the seconds covered, x 100
    disk_used_percent: float | None  # 100 - free share of the state directory's filesystem


def point_from_telemetry(
    device_id: str, received: datetime, body: dict[str, Any]
) -> ResourcePoint | None:
    """The report's resource numbers as a point; None when it has no usable interval.

    Each number is taken only when it is a finite, non-negative number within bounds; a
    malformed one counts as absent (its `*_reports` count says how many carried it).
    """
    interval = _number(body.get("interval_s"), MAX_INTERVAL_S)
    resources = body.get("resources")
    if interval is None or interval <= 0 or not isinstance(resources, dict):
        return None
    rss = _number(resources.get("rss_bytes"), MAX_BYTES)
    cpu = _number(resources.get("cpu_seconds"), interval * 1024)  # at most 1024 cores busy
    free = _number(resources.get("disk_free_bytes"), MAX_BYTES)
    total = _number(resources.get("disk_total_bytes"), MAX_BYTES)
    disk = free is not None and total is not None and total > 0 and free <= total
    return ResourcePoint(
        device_id=device_id,
        at=received,
        interval_s=interval,
        reports=1,
        rss_bytes=rss or 0.0,
        rss_reports=int(rss is not None),
        cpu_seconds=cpu or 0.0,
        disk_free_bytes=free if disk and free is not None else 0.0,
        disk_total_bytes=total if disk and total is not None else 0.0,
        disk_reports=int(disk),
    )


def merge(points: Sequence[ResourcePoint], at: datetime) -> ResourcePoint:
    """One point holding the sums of `points` (all of one device), dated `at`."""
    return ResourcePoint(
        device_id=points[0].device_id,
        at=at,
        interval_s=sum(p.interval_s for p in points),
        reports=sum(p.reports for p in points),
        rss_bytes=sum(p.rss_bytes for p in points),
        rss_reports=sum(p.rss_reports for p in points),
        cpu_seconds=sum(p.cpu_seconds for p in points),
        disk_free_bytes=sum(p.disk_free_bytes for p in points),
        disk_total_bytes=sum(p.disk_total_bytes for p in points),
        disk_reports=sum(p.disk_reports for p in points),
    )


def compact(points: Iterable[ResourcePoint], bucket_s: int) -> list[ResourcePoint]:
    """Merge points into one per device and bucket of `bucket_s` seconds, dated by its
    earliest report (`statistics.buckets`: why not the bucket's start)."""
    groups: dict[tuple[str, datetime], list[ResourcePoint]] = {}
    for point in points:
        groups.setdefault((point.device_id, bucket_start(point.at, bucket_s)), []).append(point)
    return [merge(group, min(p.at for p in group)) for _, group in sorted(groups.items())]


def sample(point: ResourcePoint) -> ResourceSample:
    """The means a chart shows for the reports merged into `point`."""
    rss = point.rss_bytes / point.rss_reports if point.rss_reports else None
    cpu = point.cpu_seconds / point.interval_s * 100 if point.interval_s > 0 else None
    disk = None
    if point.disk_reports and point.disk_total_bytes > 0:
        disk = 100 - point.disk_free_bytes / point.disk_total_bytes * 100
    return ResourceSample(point.at, point.reports, rss, cpu, disk)


async def series(
    storage: Storage, device_id: str, since: datetime, until: datetime, step_s: int
) -> list[ResourceSample]:
    """The device's resource use in steps of `step_s` seconds from `since`, oldest first."""
    points = await storage.resource_points(since, until, [device_id])
    return [sample(p) for p in compact(points, step_s)]


def _number(value: Any, maximum: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and 0 <= number <= maximum else None
