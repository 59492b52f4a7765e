"""The dashboard's fleet listing: one page of devices, filtered and searched on the server.

A fleet of 10,000 devices is never sent whole. The filters run on each device's liveness
columns (group, online flag, last sighting, reporting interval: `Storage.device_liveness`),
which storage reads without parsing any state; only the devices of the page asked for are
read whole. The connection a filter sees is the one the device views show (`fleet.connection`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

from model_registry.errors import InvalidInputError
from model_registry.services.context import RegistryContext
from model_registry.services.fleet import (
    OFFLINE,
    ONLINE,
    STALE,
    believable_interval,
    connection_of,
)
from model_registry.storage import DeviceLiveness, DeviceRecord

CONNECTIONS = (ONLINE, STALE, OFFLINE)
MAX_PAGE = 500  # devices in one page
MAX_SEARCH = 128  # characters of a search


@dataclass(frozen=True)
class FleetQuery:
    """What the operator asked for: filters, a search in device ids and groups, a page."""

    group: str | None = None
    connection: str | None = None
    search: str | None = None
    offset: int = 0
    limit: int = 100

    def __post_init__(self) -> None:
        if self.connection is not None and self.connection not in CONNECTIONS:
            raise InvalidInputError(
                f"connection must be one of {', '.join(CONNECTIONS)}, not {self.connection!r}"
            )
        if not 1 <= self.limit <= MAX_PAGE:
            raise InvalidInputError(f"limit must be from 1 to {MAX_PAGE}, not {self.limit}")
        if self.offset < 0:
            raise InvalidInputError(f"offset must be 0 or more, not {self.offset}")
        if self.search is not None and len(self.search) > MAX_SEARCH:
            raise InvalidInputError(f"search is longer than {MAX_SEARCH} characters")


@dataclass(frozen=True)
class GroupCounts:
    """How many devices a group has, by connection."""

    group: str
    online: int
    stale: int
    offline: int

    @property
    def devices(self) -> int:
        """Every device of the group."""
        return self.online + self.stale + self.offline


@dataclass(frozen=True)
class FleetPage:
    """One page of the filtered fleet, how many matched, and every group's counts."""

    devices: list[DeviceRecord]
    matched: int
    groups: list[GroupCounts]
    query: FleetQuery


def liveness_connection(device: DeviceLiveness, now: datetime) -> str:
    """The connection of a device from its liveness columns alone."""
    interval = believable_interval(device.telemetry_interval_s)
    return connection_of(device.online, device.last_seen, interval, now)


def group_counts(fleet: list[DeviceLiveness], now: datetime) -> list[GroupCounts]:
    """Every group with its devices by connection, by group name."""
    counts: dict[str, Counter[str]] = {}
    for device in fleet:
        counts.setdefault(device.group, Counter())[liveness_connection(device, now)] += 1
    return [
        GroupCounts(group, c[ONLINE], c[STALE], c[OFFLINE]) for group, c in sorted(counts.items())
    ]


async def fleet_page(ctx: RegistryContext, query: FleetQuery) -> FleetPage:
    """The devices matching `query`, by id, from `offset`, at most `limit` of them."""
    fleet = await ctx.storage.device_liveness()
    now = ctx.clock()
    needle = (query.search or "").strip().casefold()
    matched = [
        d
        for d in fleet
        if (query.group is None or d.group == query.group)
        and (query.connection is None or liveness_connection(d, now) == query.connection)
        and (not needle or needle in d.device_id.casefold() or needle in d.group.casefold())
    ]
    page = matched[query.offset : query.offset + query.limit]
    devices = await ctx.storage.devices_by_id([d.device_id for d in page])
    return FleetPage(devices, len(matched), group_counts(fleet, now), query)
