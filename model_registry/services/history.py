"""Keeping the dashboard's history downsampled: the history duty (docs/dashboard.md, "History").

Points are stored one per telemetry report. Every `[history] compact_interval_s` one registry
(`services.duties`) merges them:

* reports older than SETTLE_S into 1-minute points,
* 1-minute points older than `minute_points_days` into 1-hour points,
* and deletes 1-hour points older than `hour_points_days`.

Both kinds of points are kept this way: each device's resource use (`statistics.resources`)
and each model version's numbers (`statistics.compaction`). Points merge by adding, so a
reader's step gives the same numbers before and after a pass. A pass works through whole
buckets in slices of time and of devices, so memory stays bounded with any fleet, and records
in `history_marks` how far each tier has got. Each slice is read and then replaced in a
transaction of its own: nothing new can arrive in it meanwhile, since the ingest stores points
at the time it receives them, SETTLE_S later than anything a pass touches, and one registry at
a time runs the duty.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from model_registry.services.context import RegistryContext
from model_registry.services.duties import duty_loop
from model_registry.statistics import resources
from model_registry.statistics.buckets import bucket_start
from model_registry.statistics.compaction import compact_version_points
from model_registry.storage import ResourcePoint, VersionPoint

log = logging.getLogger(__name__)

SETTLE_S = 120  # reports younger than this are left alone: the ingest may still be storing
MINUTE_S, HOUR_S = 60, 3600
DEVICES_PER_SLICE = 100  # with 1-minute points, an hour's slice is 6,000 rows at most
_P = TypeVar("_P")


@dataclass(frozen=True)
class PointTable(Generic[_P]):
    """One kind of history rows: how to read a slice, merge it, and put it back."""

    name: str
    read: Callable[[datetime, datetime, Sequence[str]], Awaitable[list[_P]]]
    compact: Callable[[list[_P], int], list[_P]]
    replace: Callable[[datetime, datetime, Sequence[str], Sequence[_P]], Awaitable[None]]
    prune: Callable[[datetime], Awaitable[int]]


@dataclass(frozen=True)
class Tier:
    """Points older than `age` merge into buckets of `bucket_s` seconds."""

    name: str
    bucket_s: int
    age: timedelta
    slice: timedelta  # how much time one read covers


def tables(ctx: RegistryContext) -> list[PointTable[Any]]:
    """Every kind of history row the duty keeps."""
    storage = ctx.storage
    return [
        PointTable[ResourcePoint](
            "resources",
            storage.resource_points,
            resources.compact,
            storage.replace_resource_points,
            storage.prune_resource_points,
        ),
        PointTable[VersionPoint](
            "versions",
            storage.device_version_points,
            compact_version_points,
            storage.replace_version_points,
            storage.prune_version_points,
        ),
    ]


def tiers(ctx: RegistryContext) -> list[Tier]:
    """The two merges, finest first."""
    history = ctx.config.history
    return [
        Tier("minute", MINUTE_S, timedelta(seconds=SETTLE_S), timedelta(hours=1)),
        Tier("hour", HOUR_S, timedelta(days=history.minute_points_days), timedelta(hours=1)),
    ]


async def compact_history(ctx: RegistryContext) -> int:
    """Run one pass of every tier over every table, then prune; return the rows merged away."""
    now = ctx.clock()
    device_ids = [d.device_id for d in await ctx.storage.device_liveness()]
    merged = 0
    for table in tables(ctx):
        for tier in tiers(ctx):
            merged += await _compact_tier(ctx, table, tier, now, device_ids)
        oldest = now - timedelta(days=ctx.config.history.hour_points_days)
        merged += await table.prune(oldest)
    return merged


async def _compact_tier(
    ctx: RegistryContext,
    table: PointTable[Any],
    tier: Tier,
    now: datetime,
    device_ids: list[str],
) -> int:
    mark_name = f"{table.name}:{tier.name}"
    until = bucket_start(now - tier.age, tier.bucket_s)
    # A first pass looks back one slice past the tier's age: the table is as old as the
    # migration that made it, and anything older than the coarsest tier is pruned anyway.
    since = await ctx.storage.history_mark(mark_name) or until - tier.slice - timedelta(days=1)
    merged = 0
    while since < until:
        end = min(since + tier.slice, until)
        for start in range(0, len(device_ids), DEVICES_PER_SLICE):
            chunk = device_ids[start : start + DEVICES_PER_SLICE]
            points = await table.read(since, end, chunk)
            buckets = table.compact(points, tier.bucket_s)
            if len(buckets) < len(points):  # else every point is a bucket already
                await table.replace(since, end, chunk, buckets)
                merged += len(points) - len(buckets)
        await ctx.storage.set_history_mark(mark_name, end)
        since = end
    return merged


async def history_loop(ctx: RegistryContext) -> None:
    """Run `compact_history` every `[history] compact_interval_s`, on one registry at a time."""

    async def one_pass() -> None:
        merged = await compact_history(ctx)
        if merged:
            log.debug("history: merged or deleted %d points", merged)

    await duty_loop(ctx.storage, "history", one_pass, ctx.config.history.compact_interval_s)
