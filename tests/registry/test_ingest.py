"""The device-message ingest: what it stores, what it drops and why, and that nothing stops it.

Most cases hand messages to `DeviceIngest` directly on a real SQLite storage; the last test runs
the whole MQTT side of the registry against a real mosquitto and reads the counts in /metrics.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from datetime import timedelta

import aiohttp
import pytest

from edge_protocol import Topics
from edge_protocol.messages import event_payload, offline_payload, state_payload, telemetry_payload
from model_registry.api.views import device_view
from model_registry.config import load_config
from model_registry.home import InitResult
from model_registry.mqtt.client import MqttMessage
from model_registry.server import ServeOptions, running_registry
from model_registry.services.devices import add_device
from model_registry.services.ingest import DeviceIngest
from tests.registry.conftest import Api
from tests.support.broker import BrokerFactory
from tests.support.storage_records import device as device_record

TOPICS = Topics()
DEV, OTHER = "dev-1", "dev-2"
SHA = "a" * 64


def _state(device: str = DEV, version: int = 1, phase: str = "idle") -> bytes:
    models = {"clf": {"active": {"version": version, "sha256": SHA}, "phase": phase}}
    return state_payload(device, agent_version="0.1.0", models=models, trust={"stale": False})


def _message(topic: str, payload: bytes | str) -> MqttMessage:
    return MqttMessage(topic, payload.encode() if isinstance(payload, str) else payload, False)


@pytest.fixture
async def ingest(api: Api) -> DeviceIngest:
    """An ingest on the API's storage, with dev-1 and dev-2 provisioned."""
    for device in (DEV, OTHER):
        await add_device(api.ctx, device, group="lab")
    return DeviceIngest(api.ctx, TOPICS)


def _valid_event() -> bytes:
    return event_payload(DEV, "received", model="clf", version=1)


# Each case: a message that must be counted under `reason` and store nothing.
BAD_MESSAGES: list[tuple[str, Callable[[], MqttMessage], str]] = [
    ("not-json", lambda: _message(TOPICS.events(DEV), b"\xff not json"), "malformed"),
    ("json-array", lambda: _message(TOPICS.telemetry(DEV), "[1, 2]"), "malformed"),
    ("nan", lambda: _message(TOPICS.telemetry(DEV), '{"schema": 1, "x": NaN}'), "malformed"),
    ("deep-nesting", lambda: _message(TOPICS.events(DEV), "[" * 100_000), "malformed"),
    ("too-big", lambda: _message(TOPICS.telemetry(DEV), b" " * (256 * 1024 + 1)), "malformed"),
    ("wrong-schema", lambda: _message(
        TOPICS.events(DEV), _valid_event().replace(b'"schema":1', b'"schema":2')), "malformed"),
    ("unknown-event", lambda: _message(
        TOPICS.events(DEV), _valid_event().replace(b"received", b"exploded")), "malformed"),
    ("event-without-time", lambda: _message(
        TOPICS.events(DEV), json.dumps({"schema": 1, "device_id": DEV, "event": "failed"})),
        "malformed"),
    ("state-models-not-object", lambda: _message(TOPICS.state(DEV), json.dumps(
        {"schema": 1, "device_id": DEV, "online": True, "timestamp": "2026-01-01T00:00:00Z",
         "models": [], "trust": {}})), "malformed"),
    ("speaks-for-another-device", lambda: _message(TOPICS.state(DEV), _state(OTHER)), "foreign"),
    ("events-for-another-device", lambda: _message(
        TOPICS.events(OTHER), _valid_event()), "foreign"),
    ("never-provisioned", lambda: _message(TOPICS.state("ghost"), _state("ghost")),
     "unknown_device"),
    ("not-a-device-message", lambda: _message(TOPICS.assignment(DEV), b"{}"), "bad_topic"),
    ("other-prefix", lambda: _message("other/v1/devices/dev-1/state", _state()), "bad_topic"),
    ("bad-device-level", lambda: _message("edge/v1/devices/a b/state", _state()), "bad_topic"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "reason"), [c[1:] for c in BAD_MESSAGES], ids=[c[0] for c in BAD_MESSAGES]
)
async def test_a_bad_message_is_counted_and_the_next_one_still_stored(
    api: Api, ingest: DeviceIngest, make: Callable[[], MqttMessage], reason: str
) -> None:
    await ingest.handle(make())
    assert ingest.dropped == {reason: 1}
    assert ingest.stored == {}
    assert (await api.ctx.storage.get_device(DEV)).state is None
    assert await api.ctx.storage.events(DEV) == []
    assert await api.ctx.storage.telemetry(DEV) == []

    await ingest.handle(_message(TOPICS.state(DEV), _state()))
    assert ingest.stored == {"state": 1}


async def test_a_batch_stores_the_good_messages_in_order_and_counts_the_rest(
    api: Api, ingest: DeviceIngest
) -> None:
    batch = [
        _message(TOPICS.state(DEV), _state(phase="verifying")),
        _message(TOPICS.events(DEV), b"garbage"),
        _message(TOPICS.events(DEV), event_payload(DEV, "received", model="clf", version=2)),
        _message(TOPICS.state("ghost"), _state("ghost")),
        _message(TOPICS.events(DEV), event_payload(DEV, "verified", model="clf", version=2)),
        _message(TOPICS.telemetry(OTHER), telemetry_payload(OTHER, {"requests": 3})),
        _message(TOPICS.state(DEV), _state(phase="downloading")),
    ]
    await ingest.handle_batch(batch)
    assert ingest.stored == {"state": 2, "events": 2, "telemetry": 1}
    assert ingest.dropped == {"malformed": 1, "unknown_device": 1}
    events = await api.ctx.storage.events(DEV)
    assert [e.body["event"] for e in events] == ["verified", "received"]  # newest first
    device = await api.ctx.storage.get_device(DEV)
    assert device_view(device)["models"]["clf"]["phase"] == "downloading"
    assert device.online is True
    assert (await api.ctx.storage.telemetry(OTHER))[0].body["requests"] == 3


async def test_a_cleared_retained_state_is_ignored(api: Api, ingest: DeviceIngest) -> None:
    await ingest.handle(_message(TOPICS.state(DEV), b""))
    assert ingest.stored == {}
    assert ingest.dropped == {}


async def test_the_will_marks_the_device_offline_and_keeps_what_it_last_reported(
    api: Api, ingest: DeviceIngest
) -> None:
    await ingest.handle(_message(TOPICS.state(DEV), _state(version=3)))
    seen = (await api.ctx.storage.get_device(DEV)).last_seen
    await ingest.handle(_message(TOPICS.state(DEV), offline_payload(DEV)))
    device = await api.ctx.storage.get_device(DEV)
    assert device.online is False
    assert device.last_seen == seen, "the broker spoke, not the device"
    assert device_view(device)["models"]["clf"]["active"] == 3

    await ingest.handle(_message(TOPICS.state(DEV), _state(version=3)))
    device = await api.ctx.storage.get_device(DEV)
    assert device.online is True
    assert device.last_seen is not None
    assert seen is not None
    assert device.last_seen > seen


async def test_a_resent_message_is_stored_once(api: Api, ingest: DeviceIngest) -> None:
    numbered = {"msg_epoch": "9f2c4e1a0b7d3e55", "msg_seq": 7}
    first = telemetry_payload(DEV, {**numbered, "requests": 1})
    new_epoch = telemetry_payload(DEV, {**numbered, "msg_epoch": "00aa", "requests": 2})
    event = event_payload(DEV, "received", model="clf", version=1, **numbered)
    for payload in (first, first, new_epoch):
        await ingest.handle(_message(TOPICS.telemetry(DEV), payload))
    for _ in range(2):
        await ingest.handle(_message(TOPICS.events(DEV), event))
    assert ingest.stored == {"telemetry": 2, "events": 1}, "events and telemetry: two tables"
    assert ingest.dropped == {"duplicate": 2}
    reports = await api.ctx.storage.telemetry(DEV)
    assert sorted(r.body["requests"] for r in reports) == [1, 2], "a new epoch numbers anew"

    unnumbered = telemetry_payload(DEV, {"msg_seq": 9, "requests": 5})  # no epoch: no key
    await ingest.handle_batch([_message(TOPICS.telemetry(DEV), unnumbered)] * 2)
    assert ingest.stored["telemetry"] == 4, "nothing to tell a resend by: both stored"


async def test_telemetry_brings_its_version_points_once(api: Api, ingest: DeviceIngest) -> None:
    numbers = {"requests": 4, "2xx": 3, "4xx": 0, "5xx": 1, "rejected_503": 0,
               "latency_ms": {"p50": 1.0, "p95": 2.0, "p99": 2.5, "max": 3.0, "samples": 4},
               "predictions": {"output": "label", "classes": {"1": 4}}}  # fmt: skip
    body = {"msg_epoch": "9f2c4e1a0b7d3e55", "msg_seq": 3, "interval_s": 30.0,
            "models": {"clf": {"versions": {"2": numbers}}}}  # fmt: skip
    payload = telemetry_payload(DEV, body)
    for _ in range(2):  # a resend: stored once, so counted once
        await ingest.handle(_message(TOPICS.telemetry(DEV), payload))
    since = api.ctx.clock() - timedelta(minutes=1)
    points = await api.ctx.storage.version_points("clf", since)
    assert [(p.device_id, p.version, p.requests, p.server_errors) for p in points] == [
        (DEV, 2, 4, 1)
    ]
    assert points[0].detail == {"predictions": {"output": "label", "classes": {"1": 4}}}


async def test_error_events_become_the_devices_last_error(api: Api, ingest: DeviceIngest) -> None:
    rejected = event_payload(
        DEV, "rejected", model="clf", version=4, reason="chunk_hash", detail="chunk 2", seq=9
    )
    await ingest.handle(_message(TOPICS.events(DEV), rejected))
    await ingest.handle(_message(TOPICS.events(DEV), _valid_event()))
    error = (await api.ctx.storage.get_device(DEV)).last_error
    assert error is not None
    assert {k: error[k] for k in ("event", "model", "version", "reason", "detail")} == {
        "event": "rejected", "model": "clf", "version": 4, "reason": "chunk_hash",
        "detail": "chunk 2",
    }  # fmt: skip
    assert "at" in error


async def test_the_mqtt_side_counts_what_it_drops_in_metrics(
    registry_home: InitResult, broker_factory: BrokerFactory
) -> None:
    broker = broker_factory.plain()
    config = load_config(registry_home.home)
    options = ServeOptions(listen="127.0.0.1:0", mqtt_url=broker.url)
    async with running_registry(config, options) as registry:
        await registry.ctx.storage.add_device(device_record(DEV, "lab"))  # a plain broker: no login
        with broker.connect() as device:
            for topic, payload in [
                (TOPICS.events(DEV), b"{not json"),
                (TOPICS.events(DEV), b"[" * 50_000),
                (TOPICS.state(DEV), _state(OTHER)),
                (TOPICS.telemetry("ghost"), telemetry_payload("ghost", {})),
                (TOPICS.state(DEV), _state()),
            ]:
                device.publish(topic, payload)
        ingest = registry.ingest
        assert ingest is not None
        async with asyncio.timeout(20):
            while not ingest.stored:  # noqa: ASYNC110 - the counts belong to the code under test
                await asyncio.sleep(0.05)
        metrics = await _metrics(registry.api_url, registry_home.admin_token)
    for line in [
        'model_registry_ingest_dropped_total{reason="malformed"} 2',
        'model_registry_ingest_dropped_total{reason="foreign"} 1',
        'model_registry_ingest_dropped_total{reason="unknown_device"} 1',
        'model_registry_ingest_stored_total{kind="state"} 1',
        "model_registry_ingest_backlog 0",
    ]:
        assert line in metrics


async def _metrics(api_url: str, token: str) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{api_url}/metrics", headers={"Authorization": f"Bearer {token}"}) as answer,
    ):
        return await answer.text()
