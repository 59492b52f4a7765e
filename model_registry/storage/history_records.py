"""The records of the dashboard's reads and history (docs/dashboard.md), and the part of
`Storage` that keeps them: the fleet listing's liveness columns, resource points and the
history duty's marks (version points are `Storage`'s own)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True)
class ResourcePoint:
    """One device's resource use over `interval_s` from `at`: one report, or a bucket of them.

    Every number is a sum, so points merge by adding (compaction into coarser buckets keeps
    what readers compute): the mean RSS is `rss_bytes / rss_reports`, the CPU share
    `cpu_seconds / interval_s`, the disk's free share `disk_free_bytes / disk_total_bytes`.
    """

    device_id: str
    at: datetime  # when the registry received the report, or the start of the bucket
    interval_s: float  # seconds the reports cover
    reports: int
    rss_bytes: float  # sum over the reports that carried it
    rss_reports: int
    cpu_seconds: float
    disk_free_bytes: float  # sums over the reports that carried both disk numbers
    disk_total_bytes: float
    disk_reports: int


@dataclass(frozen=True)
class DeviceLiveness:
    """What the fleet listing needs to filter a device without reading its state."""

    device_id: str
    group: str
    online: bool
    last_seen: datetime | None
    telemetry_interval_s: float | None  # what its last online state said, as sent


class HistoryStorage(Protocol):
    """What `Storage` offers the dashboard and the history duty (both backends)."""

    async def device_liveness(self) -> list[DeviceLiveness]:
        """Return every device's group and liveness columns, by id (no state is read)."""
        ...

    async def resource_points(
        self, since: datetime, until: datetime, device_ids: Sequence[str] | None = None
    ) -> list[ResourcePoint]:
        """Return resource points with `since <= at < until`, of some devices or all, by time."""
        ...

    async def replace_resource_points(
        self,
        since: datetime,
        until: datetime,
        device_ids: Sequence[str],
        points: Sequence[ResourcePoint],
    ) -> None:
        """In one transaction, delete the devices' points in [since, until) and store `points`."""
        ...

    async def prune_resource_points(self, older_than: datetime) -> int:
        """Delete resource points before `older_than`; return how many went."""
        ...

    async def history_mark(self, name: str) -> datetime | None:
        """Return how far the compaction `name` has got, None before its first pass."""
        ...

    async def set_history_mark(self, name: str, done_until: datetime) -> None:
        """Record how far the compaction `name` has got."""
        ...
