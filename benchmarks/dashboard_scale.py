"""Section 2e: the dashboard's reads with 10,000 devices in the registry's database.

A SQLite home is filled as a fleet leaves it: every device provisioned in one of 20 groups,
with an online state naming its model (one in ten offline), and one device with a day of
telemetry (resource and version points every 30 s, merged by the history duty). Then each read
the dashboard makes is timed through the real API application (aiohttp's test server, in this
process): a page of the fleet unfiltered, by group, by search, by connection deep in the list;
the live stream's snapshot; `/metrics`; the device history. Median and slowest of ROUNDS each.
Every device but that one also gets RECENT_REPORTS reports in its last minutes, and two passes
of the history duty over the whole fleet are timed: the first reaches back a day, the next one
(a minute later) merges what settled since.
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from benchmarks.common import WORK, load_average, log

ROUNDS = 20
GROUPS = 20
BATCH = 500
RECENT_REPORTS = 4  # per device, every 30 s before the fill's end


@dataclass(frozen=True)
class Settings:
    """How many devices the database holds."""

    devices: int


QUICK = Settings(devices=2000)
FULL = Settings(devices=10_000)


def run(mode: str) -> dict[str, Any]:
    """Fill, then time each read."""
    settings = QUICK if mode == "quick" else FULL
    return asyncio.run(_measure(settings)) | {"section": "dashboard_scale", "mode": mode}


def _state(n: int) -> dict[str, Any]:
    return {
        "online": n % 10 != 0,
        "telemetry_interval_s": 30,
        "agent_version": "0.1.0",
        "models": {"clf": {"active": {"version": 1 + n % 2}, "phase": "idle"}},
    }


async def _fill(ctx: Any, settings: Settings) -> None:
    # Imported here: the other sections depend only on the registry's API and CLI.
    from model_registry.statistics.points import points_from_telemetry  # noqa: PLC0415
    from model_registry.statistics.resources import point_from_telemetry  # noqa: PLC0415
    from model_registry.storage import DeviceRecord, DeviceReport  # noqa: PLC0415

    storage = ctx.storage
    now = ctx.clock()
    ids = [f"dev-{n:05d}" for n in range(settings.devices)]
    for n, device_id in enumerate(ids):
        group = f"group-{n % GROUPS:02d}"
        assigned = {"clf": {"version": 1 + n % 2}}
        await storage.add_device(DeviceRecord(device_id, group, now, "x", assigned=assigned))
    for start in range(0, len(ids), BATCH):
        reports = [
            DeviceReport(d, "state", now, _state(start + i), online=(start + i) % 10 != 0)
            for i, d in enumerate(ids[start : start + BATCH])
        ]
        await storage.add_device_reports(reports)
    body = {
        "interval_s": 30.0,
        "resources": {"rss_bytes": 9e7, "cpu_seconds": 0.4, "disk_free_bytes": 5e9,
                      "disk_total_bytes": 1e10},
        "models": {"clf": {"versions": {"1": {
            "requests": 20, "2xx": 19, "4xx": 0, "5xx": 1, "rejected_503": 0,
            "latency_ms": {"p50": 2.0, "p99": 4.0, "max": 5.0, "samples": 20}}}}},
    }  # fmt: skip
    day = [now - timedelta(seconds=30 * i) for i in range(2880)]
    telemetry = [
        DeviceReport(ids[1], "telemetry", at, body,
                     points=points_from_telemetry(ids[1], at, body),
                     resources=point_from_telemetry(ids[1], at, body))
        for at in day
    ]  # fmt: skip
    for start in range(0, len(telemetry), BATCH):
        await storage.add_device_reports(telemetry[start : start + BATCH])
    # Every device's last minutes: what one steady pass of the history duty merges.
    recent = [now - timedelta(seconds=30 * i) for i in range(1, 1 + RECENT_REPORTS)]
    fleet = [
        DeviceReport(d, "telemetry", at, body,
                     points=points_from_telemetry(d, at, body),
                     resources=point_from_telemetry(d, at, body))
        for d in ids if d != ids[1] for at in recent
    ]  # fmt: skip
    for start in range(0, len(fleet), BATCH):
        await storage.add_device_reports(fleet[start : start + BATCH])


async def _timed(name: str, call: Callable[[], Awaitable[Any]]) -> dict[str, float]:
    times = []
    for _ in range(ROUNDS):
        began = time.perf_counter()
        await call()
        times.append((time.perf_counter() - began) * 1000)
    result = {"median_ms": round(statistics.median(times), 1), "max_ms": round(max(times), 1)}
    log(f"dashboard scale: {name}: median {result['median_ms']} ms, max {result['max_ms']} ms")
    return result


async def _measure(settings: Settings) -> dict[str, Any]:
    from aiohttp.test_utils import TestClient, TestServer  # noqa: PLC0415
    from model_registry.api.app import create_app  # noqa: PLC0415
    from model_registry.config import load_config  # noqa: PLC0415
    from model_registry.dashboard.live import snapshot  # noqa: PLC0415
    from model_registry.home import init_home  # noqa: PLC0415
    from model_registry.server import make_context  # noqa: PLC0415
    from model_registry.services.history import compact_history  # noqa: PLC0415
    from model_registry.storage import open_storage  # noqa: PLC0415

    root = WORK / "dashboard-scale"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    home = await init_home(root / "home")
    config = load_config(home.home)
    storage = open_storage(config.database_location)
    await storage.open()
    ctx = make_context(config, storage)
    began = time.monotonic()
    await _fill(ctx, settings)
    filled_s = time.monotonic() - began
    began = time.monotonic()
    ctx.clock = lambda: datetime.now(UTC) + timedelta(minutes=3)  # every report settled
    merged = await compact_history(ctx)
    compact_s = time.monotonic() - began
    ctx.clock = lambda: datetime.now(UTC)
    began = time.monotonic()
    ctx.clock = lambda: datetime.now(UTC) + timedelta(minutes=4)  # one more minute settled
    steady_merged = await compact_history(ctx)
    steady_s = time.monotonic() - began
    ctx.clock = lambda: datetime.now(UTC)
    log(f"dashboard scale: {settings.devices} devices filled in {filled_s:.1f} s; "
        f"first history pass {compact_s:.1f} s merged {merged} points; "
        f"a pass a minute later {steady_s:.1f} s merged {steady_merged}")  # fmt: skip
    client = TestClient(TestServer(create_app(ctx)))
    await client.start_server()
    auth = {"Authorization": f"Bearer {home.admin_token}"}

    def get(path: str) -> Callable[[], Awaitable[Any]]:
        async def call() -> None:
            response = await client.get(path, headers=auth)
            if response.status != 200:
                raise RuntimeError(f"{path}: {response.status} {await response.text()}")
            await response.read()

        return call

    async def live_snapshot() -> None:
        await snapshot(ctx)

    device = "dev-00001"
    reads = {
        "fleet_page": get("/v1/fleet/devices?limit=50"),
        "fleet_group": get("/v1/fleet/devices?limit=50&group=group-07"),
        "fleet_search": get("/v1/fleet/devices?limit=50&search=0042"),
        "fleet_offline_deep": get("/v1/fleet/devices?limit=50&connection=offline&offset=500"),
        "live_snapshot": live_snapshot,
        "metrics": get("/metrics"),
        "device_history_24h": get(f"/v1/devices/{device}/history?window=24h"),
        "devices_list_all": get("/v1/devices"),  # the CLI's listing, for comparison
    }
    results = {name: await _timed(name, call) for name, call in reads.items()}
    await client.close()
    await storage.close()
    return {
        "devices": settings.devices,
        "rounds": ROUNDS,
        "fill_s": round(filled_s, 1),
        "history_pass_s": round(compact_s, 1),
        "merged_points": merged,
        "history_next_pass_s": round(steady_s, 1),
        "history_next_pass_merged": steady_merged,
        "reads": results,
        "load_average": load_average(),
    }
