"""Merging version points into time buckets, for the history duty (docs/dashboard.md).

A merged point is what `window.aggregate` makes of its reports, kept as one row: counts and
detail summed, latency percentiles averaged with the sample counts as weights (as windows
average them, so a window over merged points gives the numbers it gave over the reports),
the largest maximum, and `reports` counting the reports. A point whose detail does not add to
the others' (a bin list of another length) becomes a merged point of its own, so nothing a
window would count is lost.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from model_registry.statistics.buckets import bucket_start
from model_registry.statistics.counts import CountsMismatchError, merge_counts
from model_registry.statistics.window import weighted_latency
from model_registry.storage.base import VersionPoint


def compact_version_points(points: Iterable[VersionPoint], bucket_s: int) -> list[VersionPoint]:
    """One point per (model, version, device, bucket of `bucket_s` seconds), dated by its
    earliest report (`statistics.buckets`: why not the bucket's start)."""
    groups: dict[tuple[str, int, str, datetime], list[VersionPoint]] = {}
    for p in points:
        key = (p.model, p.version, p.device_id, bucket_start(p.at, bucket_s))
        groups.setdefault(key, []).append(p)
    merged: list[VersionPoint] = []
    for _, group in sorted(groups.items(), key=lambda item: item[0]):
        merged += merge_points(group, min(p.at for p in group))
    return merged


def merge_points(points: Sequence[VersionPoint], at: datetime) -> list[VersionPoint]:
    """`points` (of one model version and device, oldest first) merged into as few points
    dated `at` as their details allow: each point joins the first merged point whose detail it
    adds to, else starts one; merged points keep the order of their first report, the order a
    window adds them in."""
    if len(points) == 1 and points[0].at == at:
        return list(points)
    merged: list[tuple[list[VersionPoint], dict[str, Any]]] = []
    for p in points:
        for group, detail in merged:
            try:
                total = merge_counts(detail, p.detail)
            except CountsMismatchError:
                continue
            group.append(p)
            detail.clear()
            detail.update(total)
            break
        else:
            merged.append(([p], dict(p.detail)))
    return [_merged(group, detail, at) for group, detail in merged]


def _merged(points: Sequence[VersionPoint], detail: dict[str, Any], at: datetime) -> VersionPoint:
    maxima = [p.latency_max_ms for p in points if p.latency_max_ms is not None]
    return replace(
        points[0],
        at=at,
        interval_s=sum(p.interval_s for p in points),
        requests=sum(p.requests for p in points),
        ok=sum(p.ok for p in points),
        client_errors=sum(p.client_errors for p in points),
        server_errors=sum(p.server_errors for p in points),
        rejected=sum(p.rejected for p in points),
        latency_samples=sum(p.latency_samples for p in points),
        latency_p50_ms=weighted_latency(points, "latency_p50_ms"),
        latency_p99_ms=weighted_latency(points, "latency_p99_ms"),
        latency_max_ms=max(maxima) if maxima else None,
        detail=detail,
        reports=sum(p.reports for p in points),
    )
