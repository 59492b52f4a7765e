"""The history duty on both storages: reports merge into 1-minute points, those into 1-hour
points after `[history] minute_points_days`, the oldest go after `hour_points_days`, and a
chart reads the same numbers before and after (points merge by adding)."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta

import pytest

from model_registry.config import HistoryConfig, load_config
from model_registry.home import InitResult
from model_registry.server import make_context
from model_registry.services.context import RegistryContext
from model_registry.services.history import compact_history
from model_registry.statistics import resources
from model_registry.statistics.window import window
from model_registry.storage import ResourcePoint, Storage, VersionPoint
from tests.support.storage_records import T0, device

START = T0.replace(minute=0, second=0, microsecond=0)


def point(device_id: str, at: datetime, rss: float) -> ResourcePoint:
    return ResourcePoint(device_id, at, 30.0, 1, rss, 1, 1.5, 500.0, 1000.0, 1)


async def context(home: InitResult, storage: Storage, now: datetime) -> RegistryContext:
    config = dataclasses.replace(load_config(home.home), history=HistoryConfig(1, 30, 60))
    ctx = make_context(config, storage)
    ctx.clock = lambda: now
    return ctx


async def fill(storage: Storage, device_id: str, since: datetime, hours: int) -> None:
    points = [
        point(device_id, since + timedelta(seconds=30 * i), 1000 + i) for i in range(120 * hours)
    ]
    await storage.replace_resource_points(since, since, [device_id], points)


async def test_a_pass_merges_each_tier_and_reads_stay_the_same(
    storage: Storage, registry_home: InitResult
) -> None:
    for device_id in ("d1", "d2"):
        await storage.add_device(device(device_id))
        await fill(storage, device_id, START, 2)  # a day old by `now`: hours
        await fill(storage, device_id, START + timedelta(days=1), 2)  # recent: minutes
    now = START + timedelta(days=1, hours=2, minutes=5)
    ctx = await context(registry_home, storage, now)
    before = await resources.series(storage, "d1", START, now, 3600)

    assert await compact_history(ctx) > 0
    old = await storage.resource_points(START, START + timedelta(hours=2), ["d1"])
    assert [p.at for p in old] == [START, START + timedelta(hours=1)]
    assert [p.reports for p in old] == [120, 120]
    recent = await storage.resource_points(START + timedelta(days=1), now, ["d1"])
    assert len(recent) == 120  # one a minute
    assert all(p.reports == 2 and p.at.second == 0 for p in recent)
    assert await resources.series(storage, "d1", START, now, 3600) == before

    # A second pass finds nothing left to merge.
    assert await compact_history(ctx) == 0


async def test_points_older_than_the_hour_tier_are_deleted(
    storage: Storage, registry_home: InitResult
) -> None:
    await storage.add_device(device("d1"))
    await fill(storage, "d1", START, 1)
    await fill(storage, "d1", START + timedelta(days=28), 1)
    ctx = await context(registry_home, storage, START + timedelta(days=30, hours=1))
    await compact_history(ctx)
    left = await storage.resource_points(START, START + timedelta(days=31), ["d1"])
    assert {p.at for p in left} == {START + timedelta(days=28)}  # one hour bucket
    assert left[0].reports == 120


def test_a_report_becomes_a_point_and_hostile_numbers_are_left_out() -> None:
    body = {
        "interval_s": 30.0,
        "resources": {
            "rss_bytes": -5,
            "cpu_seconds": float("inf"),
            "disk_free_bytes": 2000,
            "disk_total_bytes": 1000,
        },
    }
    made = resources.point_from_telemetry("d1", T0, body)
    assert made is not None
    assert (made.rss_reports, made.cpu_seconds, made.disk_reports) == (0, 0.0, 0)
    sample = resources.sample(made)
    assert (sample.rss_bytes, sample.disk_used_percent) == (None, None)
    assert resources.point_from_telemetry("d1", T0, {"interval_s": "x", "resources": {}}) is None
    assert resources.point_from_telemetry("d1", T0, {"interval_s": 30, "resources": []}) is None


def version_point(device_id: str, at: datetime, n: int, bins: list[int]) -> VersionPoint:
    return VersionPoint(
        model="clf",
        version=2,
        device_id=device_id,
        at=at,
        interval_s=30.0,
        requests=10,
        ok=9,
        client_errors=0,
        server_errors=1,
        rejected=0,
        latency_samples=n,
        latency_p50_ms=1.0 + n,
        latency_p99_ms=5.0 + n,
        latency_max_ms=9.0 + n,
        detail={"bins": {"X": [bins]}},
    )


async def test_version_points_merge_and_windows_read_the_same(
    storage: Storage, registry_home: InitResult
) -> None:
    await storage.add_device(device("d1"))
    points = [
        version_point("d1", START + timedelta(seconds=30 * i), 1 + i % 3, [i, 1])
        for i in range(240)  # two hours, a day before `now`: they become two hour points
    ]
    points.append(version_point("d1", START + timedelta(seconds=15), 1, [1, 2, 3]))  # odd shape
    await storage.replace_version_points(START, START, ["d1"], points)
    now = START + timedelta(days=1, hours=2, minutes=5)
    ctx = await context(registry_home, storage, now)
    span = (START, START + timedelta(hours=2))
    before = await window(storage, "clf", 2, span[0], until=span[1])

    await compact_history(ctx)
    stored = await storage.device_version_points(*span, ["d1"])
    assert [(p.at, p.reports) for p in stored] == [
        (START, 120),
        (START, 1),  # the report whose bins do not add to the others' is a point of its own
        (START + timedelta(hours=1), 120),
    ]
    after = await window(storage, "clf", 2, span[0], until=span[1])
    assert before is not None
    assert after is not None
    assert (after.reports, after.requests, after.server_errors, after.mismatched) == (
        before.reports,
        before.requests,
        before.server_errors,
        before.mismatched,
    )
    assert after.latency_p99_ms == pytest.approx(before.latency_p99_ms)
    assert after.latency_max_ms == before.latency_max_ms
    assert after.detail == before.detail
