"""Windows of version points: what a model version did, on which devices, over a time span.

`aggregate` sums points; the readers fetch them from storage first. Latency is the one number
that does not sum: devices send each interval's percentiles, not their samples, so a window's
`latency_p99_ms` is the sample-weighted mean of the reports' p99 (an estimate, exact when one
report covers the window) and `latency_max_ms` the largest maximum.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from edge_protocol import format_time
from model_registry.statistics.counts import CountsMismatchError, merge_counts
from model_registry.storage.base import Storage, VersionPoint

_K = TypeVar("_K", bound=Hashable)


@dataclass(frozen=True)
class VersionWindow:
    """The sums of a model version's points over a window."""

    model: str
    version: int
    devices: frozenset[str]
    reports: int
    requests: int
    ok: int
    client_errors: int
    server_errors: int
    rejected: int
    latency_samples: int
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    latency_max_ms: float | None
    detail: dict[str, Any] = field(default_factory=dict)
    mismatched: int = 0  # reports whose detail did not merge (a shape another report lacks)

    @property
    def server_error_rate(self) -> float | None:
        """5xx answers per request, None with no requests."""
        return self.server_errors / self.requests if self.requests else None


def aggregate(points: Iterable[VersionPoint]) -> VersionWindow | None:
    """Sum points of one model version; None for none. Raises ValueError for a mix."""
    items = list(points)
    if not items:
        return None
    keys = {(p.model, p.version) for p in items}
    if len(keys) != 1:
        raise ValueError(f"points of several model versions: {sorted(keys)}")
    detail: dict[str, Any] = {}
    mismatched = 0
    for p in items:
        try:
            detail = merge_counts(detail, p.detail)
        except CountsMismatchError:
            mismatched += p.reports  # left out rather than guessed at; counted for the reader
    first = items[0]
    return VersionWindow(
        model=first.model,
        version=first.version,
        devices=frozenset(p.device_id for p in items),
        reports=sum(p.reports for p in items),
        requests=sum(p.requests for p in items),
        ok=sum(p.ok for p in items),
        client_errors=sum(p.client_errors for p in items),
        server_errors=sum(p.server_errors for p in items),
        rejected=sum(p.rejected for p in items),
        latency_samples=sum(p.latency_samples for p in items),
        latency_p50_ms=weighted_latency(items, "latency_p50_ms"),
        latency_p99_ms=weighted_latency(items, "latency_p99_ms"),
        latency_max_ms=max(
            (p.latency_max_ms for p in items if p.latency_max_ms is not None), default=None
        ),
        detail=detail,
        mismatched=mismatched,
    )


async def window(
    storage: Storage,
    model: str,
    version: int,
    since: datetime,
    *,
    until: datetime | None = None,
    device_ids: Sequence[str] | None = None,
) -> VersionWindow | None:
    """The window of one model version, on every device or on `device_ids`."""
    points = await storage.version_points(model, since, until, version, device_ids)
    return aggregate(points)


async def windows_by_version(
    storage: Storage,
    model: str,
    since: datetime,
    until: datetime | None = None,
    device_ids: Sequence[str] | None = None,
) -> dict[int, VersionWindow]:
    """Fleet-wide windows of each version of a model that reported."""
    points = await storage.version_points(model, since, until, None, device_ids)
    return _grouped(points, lambda p: p.version)


async def windows_by_device(
    storage: Storage,
    model: str,
    since: datetime,
    *,
    until: datetime | None = None,
    version: int | None = None,
    device_ids: Sequence[str] | None = None,
) -> dict[tuple[str, int], VersionWindow]:
    """Windows per (device_id, version) of a model."""
    points = await storage.version_points(model, since, until, version, device_ids)
    return _grouped(points, lambda p: (p.device_id, p.version))


async def series(
    storage: Storage,
    model: str,
    since: datetime,
    until: datetime,
    step: timedelta,
    *,
    version: int | None = None,
    device_ids: Sequence[str] | None = None,
) -> list[tuple[datetime, dict[int, VersionWindow]]]:
    """Windows per version in consecutive steps of [since, until), for charts.

    Each element is (start of the step, windows by version); steps with no report are left out.
    """
    if step <= timedelta(0):
        raise ValueError("step must be positive")
    points = await storage.version_points(model, since, until, version, device_ids)
    buckets: dict[int, list[VersionPoint]] = defaultdict(list)
    for p in points:
        buckets[int((p.at - since) / step)].append(p)
    return [
        (since + index * step, _grouped(buckets[index], lambda p: p.version))
        for index in sorted(buckets)
    ]


async def device_series(
    storage: Storage, device_id: str, since: datetime, until: datetime, step_s: int
) -> dict[str, list[dict[str, Any]]]:
    """One device's requests, 5xx and latency per model in steps of `step_s`, for its charts.

    Every version the device served in a step is summed into it (a swap shows as one step
    with both); latency percentiles are weighted by samples, as in windows.
    """
    points = await storage.device_version_points(since, until, [device_id])
    steps: dict[str, dict[int, list[VersionPoint]]] = defaultdict(lambda: defaultdict(list))
    for p in points:
        steps[p.model][int((p.at - since).total_seconds() // step_s)].append(p)
    return {
        model: [
            {
                "at": format_time(since + timedelta(seconds=index * step_s)),
                "versions": sorted({p.version for p in group}),
                "requests": sum(p.requests for p in group),
                "server_errors": sum(p.server_errors for p in group),
                "latency_p50_ms": weighted_latency(group, "latency_p50_ms"),
                "latency_p99_ms": weighted_latency(group, "latency_p99_ms"),
            }
            for index, group in sorted(by_step.items())
        ]
        for model, by_step in sorted(steps.items())
    }


def _grouped(
    points: Iterable[VersionPoint], key: Callable[[VersionPoint], _K]
) -> dict[_K, VersionWindow]:
    groups: dict[_K, list[VersionPoint]] = defaultdict(list)
    for p in points:
        groups[key(p)].append(p)
    windows = {k: aggregate(v) for k, v in groups.items()}
    return {k: w for k, w in windows.items() if w is not None}


def weighted_latency(points: Sequence[VersionPoint], name: str) -> float | None:
    """The mean of the points' `name` (a latency percentile) weighted by their sample counts."""
    total = weight = 0.0
    for p in points:
        value = getattr(p, name)
        if value is not None and p.latency_samples:
            total += value * p.latency_samples
            weight += p.latency_samples
    return total / weight if weight else None
