"""Section 2d: the registry's ingest under a large fleet's telemetry (10,000 devices, each
reporting every 30 s), and after a burst of one report from every device at once.

The registry's own `DeviceIngest` and storage run in this process; the reports go into the
ingest's queue as its MQTT connection would put them, each device at its own phase of the
interval. Measured per report: the lag from entering the queue to being committed. The lag
stays bounded when the ingest keeps up; a backlog that grows would show as a lag that grows
with the run.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from benchmarks.common import WORK, load_average, log, percentile

EPOCH = "5ca1ab1e00000001"


@dataclass(frozen=True)
class Settings:
    """Fleet size, reporting interval and how long the steady load runs."""

    devices: int
    interval_s: float
    duration_s: float


QUICK = Settings(devices=1000, interval_s=30.0, duration_s=20.0)
FULL = Settings(devices=10_000, interval_s=30.0, duration_s=90.0)
TICK_S = 0.05  # the feeder's step: each step puts in the reports due by then


def run(mode: str) -> dict[str, Any]:
    """Steady load, then a burst; the lags of each."""
    settings = QUICK if mode == "quick" else FULL
    return asyncio.run(_measure(settings)) | {"section": "ingest_scale", "mode": mode}


class Probe:
    """The ingest under test, with its storage timed: each report's lag into the database."""

    def __init__(self, ingest: Any, storage: Any, topics: Any, ids: list[str]) -> None:
        self.ingest, self.storage, self.topics = ingest, storage, topics
        self.queued: dict[tuple[str, int], float] = {}
        self.lags: list[tuple[float, float]] = []  # (when committed, lag)
        self.seqs = dict.fromkeys(ids, 0)
        self.empty = asyncio.Event()  # set while every report put in is committed
        self._store = storage.add_device_reports
        storage.add_device_reports = self._timed_store

    async def _timed_store(self, reports: list[Any]) -> list[str]:
        outcomes: list[str] = await self._store(reports)
        done = time.monotonic()
        for report in reports:
            put = self.queued.pop((report.device_id, report.msg_seq or 0), None)
            if put is not None:
                self.lags.append((done, done - put))
        if not self.queued:
            self.empty.set()
        return outcomes

    def put(self, device_id: str) -> None:
        """One telemetry report of `device_id` into the ingest's queue, as MQTT delivers it."""
        from edge_protocol.messages import telemetry_payload  # noqa: PLC0415
        from model_registry.mqtt.client import MqttMessage  # noqa: PLC0415

        self.seqs[device_id] += 1
        seq = self.seqs[device_id]
        body = {"msg_epoch": EPOCH, "msg_seq": seq, "requests": 12, "errors": 0}
        payload = telemetry_payload(device_id, body)
        self.queued[(device_id, seq)] = time.monotonic()
        self.empty.clear()
        self.ingest.queue.put_nowait(MqttMessage(self.topics.telemetry(device_id), payload, False))

    async def drained(self) -> None:
        """Return once every report put in is committed."""
        if self.queued:
            await asyncio.wait_for(self.empty.wait(), 300)


async def _open(settings: Settings) -> Probe:
    # Imported here: the other sections depend only on the registry's API and CLI.
    from model_registry.config import load_config  # noqa: PLC0415
    from model_registry.home import init_home  # noqa: PLC0415
    from model_registry.server import make_context  # noqa: PLC0415
    from model_registry.services.ingest import DeviceIngest  # noqa: PLC0415
    from model_registry.storage import DeviceRecord, open_storage  # noqa: PLC0415

    root = WORK / "ingest-scale"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    config = load_config((await init_home(root / "home")).home)
    storage = open_storage(config.database_location)
    await storage.open()
    ids = [f"tele-{i:05d}" for i in range(settings.devices)]
    now = datetime.now(UTC)
    for device_id in ids:
        await storage.add_device(DeviceRecord(device_id, "tele", now, "pbkdf2$unused"))
    ingest = DeviceIngest(make_context(config, storage), config.topics)
    return Probe(ingest, storage, config.topics, ids)


async def _steady(probe: Probe, settings: Settings) -> dict[str, Any]:
    ids = list(probe.seqs)
    rate = settings.devices / settings.interval_s
    log(f"ingest scale: {settings.devices} devices, {rate:.0f} reports/s "
        f"for {settings.duration_s:.0f} s")  # fmt: skip
    began = time.monotonic()
    sent, backlog = 0, 0
    while (elapsed := time.monotonic() - began) < settings.duration_s:
        # Each device at its own phase of the interval: the reports due by now go in.
        while sent < int(elapsed * rate):
            probe.put(ids[sent % len(ids)])
            sent += 1
        backlog = max(backlog, probe.ingest.queue.qsize())
        await asyncio.sleep(TICK_S)
    await probe.drained()
    steady = _lag_summary(probe.lags, began, settings.duration_s)
    steady.update(reports=sent, rate_per_s=round(rate, 1), max_queued=backlog)
    log(f"ingest scale steady: lag p50 {steady['lag_p50_s']} s, p99 {steady['lag_p99_s']} s, "
        f"max {steady['lag_max_s']} s")  # fmt: skip
    return steady


async def _burst(probe: Probe) -> dict[str, Any]:
    probe.lags.clear()
    began = time.monotonic()
    for device_id in probe.seqs:
        probe.put(device_id)
    await probe.drained()
    drained = time.monotonic() - began
    count = len(probe.seqs)
    log(f"ingest scale burst: {count} reports stored in {drained:.2f} s")
    return _lag_summary(probe.lags, began, None) | {
        "reports": count,
        "drained_s": round(drained, 3),
        "reports_per_s": round(count / drained, 1),
    }


async def _measure(settings: Settings) -> dict[str, Any]:
    probe = await _open(settings)
    worker = asyncio.create_task(probe.ingest.run(probe.ingest.queue))
    try:
        load = [round(x, 2) for x in load_average()]
        steady = await _steady(probe, settings)
        burst = await _burst(probe)
        if probe.ingest.dropped:
            raise RuntimeError(f"the ingest dropped reports: {dict(probe.ingest.dropped)}")
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)
        await probe.storage.close()
    return {
        "settings": {
            "devices": settings.devices,
            "interval_s": settings.interval_s,
            "duration_s": settings.duration_s,
            "storage": "sqlite",
        },
        "load_average": load,
        "steady": steady,
        "burst": burst,
        "stored": dict(probe.ingest.stored),
    }


def _lag_summary(
    lags: list[tuple[float, float]], began: float, duration_s: float | None
) -> dict[str, Any]:
    values = [lag for _, lag in lags]
    out = {
        "lag_p50_s": round(percentile(values, 50), 4),
        "lag_p99_s": round(percentile(values, 99), 4),
        "lag_max_s": round(max(values), 4) if values else None,
    }
    if duration_s is not None:  # bounded means: the last third lags no more than the first
        third = duration_s / 3
        first = [lag for at, lag in lags if at - began < third]
        last = [lag for at, lag in lags if at - began >= 2 * third]
        out["lag_p99_first_third_s"] = round(percentile(first, 99), 4)
        out["lag_p99_last_third_s"] = round(percentile(last, 99), 4)
    return out


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=2))
