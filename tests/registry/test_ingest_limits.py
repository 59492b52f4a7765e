"""One device cannot fill the registry's disk, memory or log; retention bounds what is stored.

The registry runs its MQTT side against a real mosquitto; devices publish with paho, as an
agent would, and the checks read what an operator sees: the database file, /metrics, the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from edge_protocol import Topics, utc_now
from edge_protocol.messages import event_payload, offline_payload, state_payload, telemetry_payload
from model_registry.config import FleetConfig, IngestConfig, load_config
from model_registry.home import InitResult
from model_registry.mqtt.client import MqttMessage
from model_registry.server import RunningRegistry, ServeOptions, running_registry
from model_registry.services.ingest import DeviceIngest
from model_registry.services.retention import prune_device_messages
from tests.support.broker import Broker, BrokerFactory
from tests.support.storage_records import device as device_record

TOPICS = Topics()
NOISY, CALM = "noisy", "calm"
SHA = "b" * 64
BIG_DETAIL = "x" * (200 * 1024)  # an event of about 200 KB, under the protocol's 256 KiB
WAIT_S = 60.0  # generous: only ever reached when something is broken

# Small buckets that barely refill, so a test-sized flood is a flood whatever the test's pace;
# a long log interval, so one line is all.
LIMITS = """
[ingest]
messages_per_minute = 1
burst_messages = 60
kib_per_minute = 1
burst_kib = 2048
drop_log_interval_s = 3600
"""


def _configure(home: Path, extra: str) -> None:
    config = home / "registry.toml"
    config.write_text(_without_sections(config.read_text(), extra) + extra)


def _without_sections(text: str, extra: str) -> str:
    """The file without the sections `extra` sets, so the keys are not defined twice."""
    names = {line.strip() for line in extra.splitlines() if line.startswith("[")}
    kept, skipping = [], False
    for line in text.splitlines(keepends=True):
        if line.startswith("["):
            skipping = line.strip() in names
        if not skipping:
            kept.append(line)
    return "".join(kept)


@pytest.fixture
def broker(broker_factory: BrokerFactory) -> Broker:
    """An anonymous mosquitto of this test alone."""
    return broker_factory.plain()


@asynccontextmanager
async def _serve(home: Path, broker: Broker) -> AsyncIterator[RunningRegistry]:
    """The registry of `home` on `broker`, with the two devices provisioned."""
    options = ServeOptions(listen="127.0.0.1:0", mqtt_url=broker.url)
    async with running_registry(load_config(home), options) as registry:
        # Records alone: this plain broker has no logins to make (no wait for its answer).
        for name in (NOISY, CALM):
            await registry.ctx.storage.add_device(device_record(name, "lab"))
        yield registry


@pytest.fixture
async def limited(registry_home: InitResult, broker: Broker) -> AsyncIterator[RunningRegistry]:
    """A registry with small per-device buckets, on the test's broker."""
    _configure(registry_home.home, LIMITS)
    async with _serve(registry_home.home, broker) as registry:
        yield registry


def _publish_all(broker: Broker, messages: list[tuple[str, bytes]]) -> None:
    with broker.connect() as client:
        for topic, payload in messages:
            client.publish(topic, payload)


async def _until(check: Callable[[], object], what: str) -> None:
    async with asyncio.timeout(WAIT_S):
        while not await _value(check):  # noqa: ASYNC110 - the state belongs to the code under test
            await asyncio.sleep(0.05)
    assert await _value(check), what


async def _value(check: Callable[[], object]) -> object:
    result = check()
    return await result if asyncio.iscoroutine(result) else result


def _database_bytes(home: Path) -> int:
    """The database's size as SQLite sees it, the write-ahead log included."""
    with contextlib.closing(sqlite3.connect(home / "registry.db")) as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        return int(pages * conn.execute("PRAGMA page_size").fetchone()[0])


async def _metrics(registry: RunningRegistry, token: str) -> str:
    headers = {"Authorization": f"Bearer {token}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{registry.api_url}/metrics", headers=headers) as answer,
    ):
        return await answer.text()


def _metric(text: str, line_start: str) -> int:
    values = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(line_start)]
    assert len(values) == 1, f"{line_start} not in /metrics"
    return int(values[0])


async def test_a_flooding_device_is_dropped_counted_and_named_while_others_are_stored(
    limited: RunningRegistry,
    registry_home: InitResult,
    broker: Broker,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="model_registry.services.ingest")
    home = registry_home.home
    before = _database_bytes(home)
    big = [
        (
            TOPICS.events(NOISY),
            event_payload(NOISY, "failed", reason="load_error", detail=BIG_DETAIL),
        )
        for _ in range(200)
    ]
    flood = [(TOPICS.telemetry(NOISY), telemetry_payload(NOISY, {"n": n})) for n in range(300)]
    calm_state = state_payload(CALM, agent_version="0.1.0", models={}, trust={})
    calm = [(TOPICS.events(CALM), event_payload(CALM, "received", model="clf", version=n))
            for n in (1, 2, 3)] + [(TOPICS.state(CALM), calm_state)]  # fmt: skip
    await asyncio.to_thread(_publish_all, broker, big + flood + calm)

    storage = limited.ctx.storage
    # mosquitto delivers to the registry in order: once the calm device's last message is
    # stored, everything the noisy one sent has been handled.
    await _until(lambda: _online(limited, CALM), "the calm device's state is stored")
    assert [e.body["version"] for e in await storage.events(CALM)] == [3, 2, 1]

    ingest = limited.ingest
    assert ingest is not None
    dropped = ingest.dropped["rate_limited"]
    assert dropped >= 300, ingest.dropped
    stored_noisy = await storage.events(NOISY, limit=1000)
    stored_telemetry = await storage.telemetry(NOISY, limit=1000)
    assert len(stored_noisy) + len(stored_telemetry) + dropped == 500
    assert all(len(e.body["detail"]) <= 1024 for e in stored_noisy), "details are cut"
    assert stored_noisy, "what fit the buckets is stored"
    assert stored_noisy[0].body["detail"].endswith("…")
    assert _database_bytes(home) - before < 2 * 1024 * 1024, "200 x 200 KB did not land"

    metrics = await _metrics(limited, registry_home.admin_token)
    assert _metric(metrics, 'model_registry_ingest_dropped_total{reason="rate_limited"}') == dropped
    top = 'model_registry_ingest_dropped_top_devices{device_id="noisy"}'
    assert _metric(metrics, top) == dropped
    assert 'device_id="calm"' not in metrics
    lines = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(lines) == 1, "one log line per interval, however many were dropped"
    assert "noisy" in lines[0]
    assert "rate_limited" in lines[0]


async def _online(registry: RunningRegistry, device: str) -> bool:
    return (await registry.ctx.storage.get_device(device)).online


async def test_the_offline_will_passes_an_empty_bucket(
    limited: RunningRegistry, broker: Broker
) -> None:
    state = state_payload(NOISY, agent_version="0.1.0", models={}, trust={})
    flood = [(TOPICS.state(NOISY), state)] * 100  # far over the burst of 60
    await asyncio.to_thread(
        _publish_all, broker, [*flood, (TOPICS.state(NOISY), offline_payload(NOISY))]
    )
    await _until(lambda: _offline_after_flood(limited), "the will marks the device offline anyway")
    ingest = limited.ingest
    assert ingest is not None
    before = ingest.dropped["rate_limited"]
    calm = state_payload(CALM, agent_version="0.1.0", models={}, trust={})
    wills = [(TOPICS.state(NOISY), offline_payload(NOISY))] * 50 + [(TOPICS.state(CALM), calm)]
    await asyncio.to_thread(_publish_all, broker, wills)
    await _until(lambda: _online(limited, CALM), "the calm device's state is stored")
    assert ingest.dropped["rate_limited"] - before >= 48, "a flood of wills is a flood too"


async def _offline_after_flood(registry: RunningRegistry) -> bool:
    device = await registry.ctx.storage.get_device(NOISY)
    ingest = registry.ingest
    assert ingest is not None
    return device.last_seen is not None and not device.online and ingest.dropped["rate_limited"] > 0


RETENTION = """
[fleet]
events_max_per_device = 5
telemetry_max_per_device = 3
prune_interval_s = 1
"""


async def test_the_retention_duty_keeps_the_newest_events_and_telemetry_of_each_device(
    registry_home: InitResult, broker: Broker
) -> None:
    _configure(registry_home.home, RETENTION)
    async with _serve(registry_home.home, broker) as registry:
        messages = []
        for n in range(20):
            numbered = {"msg_epoch": "e1", "msg_seq": n}
            messages.append(
                (TOPICS.events(CALM), event_payload(CALM, "received", version=n + 1, **numbered))
            )
            messages.append((TOPICS.telemetry(CALM), telemetry_payload(CALM, {"n": n, **numbered})))
        await asyncio.to_thread(_publish_all, broker, messages)
        storage = registry.ctx.storage
        ingest = registry.ingest
        assert ingest is not None
        await _until(lambda: ingest.stored["telemetry"] == 20, "all 40 messages are stored")
        await _until(lambda: _counts(registry, CALM, (5, 3)), "the duty prunes to 5 and 3")
        assert [e.body["version"] for e in await storage.events(CALM)] == [20, 19, 18, 17, 16]
        assert [t.body["n"] for t in await storage.telemetry(CALM)] == [19, 18, 17]


async def _counts(registry: RunningRegistry, device: str, expected: tuple[int, int]) -> bool:
    storage = registry.ctx.storage
    found = (len(await storage.events(device, 100)), len(await storage.telemetry(device, 100)))
    return found == expected


async def test_events_and_telemetry_past_their_age_are_pruned(
    registry_home: InitResult, broker: Broker
) -> None:
    async with _serve(registry_home.home, broker) as registry:
        ctx = registry.ctx
        ingest = registry.ingest
        assert ingest is not None
        old = [
            (TOPICS.events(CALM), event_payload(CALM, "received", version=1)),
            (TOPICS.telemetry(CALM), telemetry_payload(CALM, {"n": "old"})),
        ]
        await asyncio.to_thread(_publish_all, broker, old)
        await _until(lambda: sum(ingest.stored.values()) == 2, "both are stored")
        fleet = ctx.config.fleet
        # Between the two retentions (7 and 90 days by default): only telemetry is old enough.
        week_later = utc_now() + timedelta(days=fleet.telemetry_retention_days + 1)
        report = await prune_device_messages(dataclasses.replace(ctx, clock=lambda: week_later))
        assert (report.events_pruned, report.telemetry_pruned) == (0, 1)
        later = utc_now() + timedelta(days=fleet.events_retention_days + 1)
        report = await prune_device_messages(dataclasses.replace(ctx, clock=lambda: later))
        assert (report.events_pruned, report.telemetry_pruned) == (1, 0)
        assert await ctx.storage.events(CALM) == []


async def test_the_queue_to_the_database_is_bounded_in_bytes(registry_home: InitResult) -> None:
    """Messages arriving faster than storage takes them wait in at most `backlog_mib`."""
    _configure(registry_home.home, "\n[ingest]\nbacklog_mib = 1\n")
    config = load_config(registry_home.home)
    from model_registry.server import make_context
    from model_registry.storage import open_storage

    storage = open_storage(config.database_location)
    await storage.open()
    try:
        ingest = DeviceIngest(make_context(config, storage), TOPICS)
        payload = telemetry_payload(NOISY, {"pad": "x" * (200 * 1024)})
        for _ in range(10):  # 2 MB, nothing consuming: as when the database stalls
            ingest.queue.put_nowait(MqttMessage(TOPICS.telemetry(NOISY), payload, False))
        assert ingest.queue.qsize() == 1024 * 1024 // len(payload)
        assert ingest.queue.bytes <= 1024 * 1024
        assert ingest.dropped["overloaded"] == 10 - ingest.queue.qsize()
        ingest.queue.get_nowait()
        assert ingest.queue.bytes == (ingest.queue.qsize()) * len(payload)
    finally:
        await storage.close()


def test_every_limit_is_in_the_template_and_the_docs(registry_home: InitResult) -> None:
    docs = Path(__file__).resolve().parents[2] / "docs"
    configuration = (docs / "configuration.md").read_text()
    limits = (docs / "operations.md").read_text().split("## 9. Limits", 1)[1]
    template = (registry_home.home / "registry.toml").read_text()
    keys = [
        (f.name, f.default) for cls in (IngestConfig, FleetConfig) for f in dataclasses.fields(cls)
    ]
    keys += [("max_upload_mb", 256), ("max_dataset_mb", 64)]
    for name, default in keys:
        assert f"\n{name} = {default}\n" in template, name
        assert f"| `{name}` | integer | `{default}` |" in configuration, name
        assert f"`{name}`" in limits or f"] {name}`" in limits, name
    config = load_config(registry_home.home)
    assert (config.ingest, config.fleet) == (IngestConfig(), FleetConfig()), (
        "the template is the defaults"
    )
