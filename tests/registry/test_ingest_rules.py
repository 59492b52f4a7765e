"""The field rules of device messages: what is refused as malformed, cut, or left out.

Messages are handed to the real ingest on a real SQLite storage, as the MQTT side does; the
MQTT path itself is in test_ingest.py and test_ingest_limits.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from edge_protocol import Topics
from edge_protocol.messages import event_payload, state_payload, telemetry_payload
from model_registry.api.views import device_view
from model_registry.mqtt.client import MqttMessage
from model_registry.services.devices import add_device
from model_registry.services.ingest import DeviceIngest
from tests.registry.conftest import Api

TOPICS = Topics()
DEV = "dev-1"
SHA = "c" * 64
ESC = "\x1b[2J\x1b[H"  # clear the screen, cursor home
INT64_MAX = 2**63 - 1


@pytest.fixture
async def ingest(api: Api) -> DeviceIngest:
    """An ingest on the API's storage, with dev-1 provisioned."""
    await add_device(api.ctx, DEV, group="lab")
    return DeviceIngest(api.ctx, TOPICS)


def _model(**changes: Any) -> dict[str, Any]:
    entry = {"active": {"version": 2, "sha256": SHA}, "previous": None, "phase": "idle",
             "last_error": None}  # fmt: skip
    return {**entry, **changes}


def _state(models: Any = None, trust: Any = None, **extra: Any) -> MqttMessage:
    body = {"schema": 1, "device_id": DEV, "online": True, "timestamp": "2026-06-01T12:00:00Z",
            "agent_version": "0.1.0", "models": {"clf": _model()} if models is None else models,
            "trust": {"root_version": 1, "assignment_seq": 4, "stale": False}
            if trust is None else trust, **extra}  # fmt: skip
    return MqttMessage(TOPICS.state(DEV), json.dumps(body).encode(), True)


def _event(**fields: Any) -> MqttMessage:
    body = {"schema": 1, "device_id": DEV, "timestamp": "2026-06-01T12:00:00Z",
            "event": "rejected", "model": "clf", "version": 3, **fields}  # fmt: skip
    return MqttMessage(TOPICS.events(DEV), json.dumps(body).encode(), False)


def _telemetry(raw: str) -> MqttMessage:
    text = '{"schema": 1, "device_id": "dev-1", "timestamp": "2026-06-01T12:00:00Z", ' + raw + "}"
    return MqttMessage(TOPICS.telemetry(DEV), text.encode(), False)


MALFORMED: list[tuple[str, Callable[[], MqttMessage]]] = [
    ("unknown-phase", lambda: _state({"clf": _model(phase="exploded")})),
    ("phase-with-escape-codes", lambda: _state({"clf": _model(phase=f"idle{ESC}")})),
    ("fake-row-in-phase", lambda: _state({"clf": _model(phase="idle\nghost  lab  online")})),
    ("model-name-with-escape-codes", lambda: _state({f"clf{ESC}": _model()})),
    ("model-entry-not-object", lambda: _state({"clf": "idle"})),
    ("active-version-2**64", lambda: _state({"clf": _model(active={"version": 2**64,
                                                                   "sha256": SHA})})),
    ("active-version-text", lambda: _state({"clf": _model(active={"version": "2",
                                                                  "sha256": SHA})})),
    ("active-sha256-not-hex", lambda: _state({"clf": _model(active={"version": 2,
                                                                    "sha256": "z" * 64})})),
    ("last-error-not-text", lambda: _state({"clf": _model(last_error={"x": 1})})),
    ("assignment-seq-at-int64-max", lambda: _state(trust={"assignment_seq": INT64_MAX})),
    ("assignment-seq-negative", lambda: _state(trust={"assignment_seq": -1})),
    ("stale-not-boolean", lambda: _state(trust={"stale": "no"})),
    ("agent-version-with-escape-codes", lambda: _state(agent_version=f"0.1{ESC}")),
    ("agent-version-overlong", lambda: _state(agent_version="1" * 65)),
    ("telemetry-interval-zero", lambda: _state(telemetry_interval_s=0)),
    ("telemetry-interval-text", lambda: _state(telemetry_interval_s="5")),
    ("telemetry-interval-boolean", lambda: _state(telemetry_interval_s=True)),
    ("state-over-its-cap", lambda: _state({f"m{n}": _model(last_error="e" * 1000)
                                           for n in range(100)})),
    ("reason-with-escape-codes", lambda: _event(reason=f"chunk_hash{ESC}")),
    ("reason-overlong", lambda: _event(reason="r" * 65)),
    ("event-model-not-a-name", lambda: _event(model="a/b")),
    ("event-version-zero", lambda: _event(version=0)),
    ("event-version-2**64", lambda: _event(version=2**64)),
    ("event-version-boolean", lambda: _event(version=True)),
    ("event-seq-negative", lambda: _event(seq=-1)),
    ("progress-not-object", lambda: _event(event="downloading", progress=[1, 2])),
    ("progress-not-counts", lambda: _event(event="downloading", progress={"chunks_done": "1"})),
    ("detail-not-text", lambda: _event(detail=["x"])),
    ("msg-seq-2**64", lambda: _event(msg_epoch="e1", msg_seq=2**64)),
    ("msg-epoch-with-slash", lambda: _event(msg_epoch="a/b", msg_seq=1)),
    ("telemetry-nested-too-deep", lambda: _telemetry('"x": ' + "[" * 20 + "]" * 20)),
    ("telemetry-infinite-number", lambda: _telemetry('"x": 1e999')),
    ("telemetry-5000-digit-integer", lambda: _telemetry('"x": ' + "9" * 5000)),
    ("telemetry-integer-over-64-bits", lambda: _telemetry(f'"x": {2**64}')),
    ("telemetry-msg-seq-negative", lambda: _telemetry('"msg_seq": -1')),
    ("telemetry-over-its-cap", lambda: _telemetry('"pad": "' + "p" * 100_000 + '"')),
]  # fmt: skip


@pytest.mark.parametrize("make", [c[1] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
async def test_a_message_breaking_the_field_rules_is_malformed_and_stores_nothing(
    api: Api, ingest: DeviceIngest, make: Callable[[], MqttMessage]
) -> None:
    await ingest.handle(make())
    assert ingest.dropped == {"malformed": 1}
    assert ingest.stored == {}
    device = await api.ctx.storage.get_device(DEV)
    assert (device.state, device.last_error) == (None, None)
    assert await api.ctx.storage.events(DEV) == []
    assert await api.ctx.storage.telemetry(DEV) == []

    await ingest.handle(_state())
    assert ingest.stored == {"state": 1}, "the device's next good message is stored"


async def test_human_text_is_cut_to_the_configured_length(api: Api, ingest: DeviceIngest) -> None:
    await ingest.handle(_event(reason="load_error", detail="d" * 200_000))
    await ingest.handle(_state({"clf": _model(phase="failed", last_error="e" * 50_000)}))
    assert ingest.stored == {"events": 1, "state": 1}
    limit = api.ctx.config.ingest.max_text_chars
    (event,) = await api.ctx.storage.events(DEV)
    assert len(event.body["detail"]) == limit
    assert event.body["detail"].endswith("…")
    device = await api.ctx.storage.get_device(DEV)
    assert device.last_error is not None
    assert len(device.last_error["detail"]) == limit, "the last error is cut the same way"
    assert device.state is not None
    assert len(device.state["models"]["clf"]["last_error"]) == limit


async def test_fields_the_protocol_does_not_list_are_not_stored(
    api: Api, ingest: DeviceIngest
) -> None:
    junk = {"junk": "j" * 1000, "nested": {"a": [1, 2]}}
    await ingest.handle(_state({"clf": _model(**junk)}, trust={"stale": False, **junk}, **junk))
    await ingest.handle(_event(progress={"chunks_done": 1, "chunks_total": 4, **junk}, **junk))
    device = await api.ctx.storage.get_device(DEV)
    assert device.state is not None
    assert set(device.state) == {"schema", "device_id", "online", "timestamp", "agent_version",
                                 "models", "trust"}  # fmt: skip
    assert set(device.state["models"]["clf"]) == {"active", "previous", "phase", "last_error"}
    assert device.state["trust"] == {"stale": False}
    (event,) = await api.ctx.storage.events(DEV)
    assert "junk" not in event.body
    assert event.body["progress"] == {"chunks_done": 1, "chunks_total": 4}


async def test_what_an_agent_sends_is_stored_whole(api: Api, ingest: DeviceIngest) -> None:
    models = {"clf": _model(previous={"version": 1, "sha256": SHA})}
    trust = {"root_version": 1, "assignment_seq": INT64_MAX - 1, "stale": False}
    state = state_payload(DEV, agent_version="0.1.0+g1a2b.dirty", models=models, trust=trust)
    numbered = {"msg_epoch": "9f2c4e1a0b7d3e55", "msg_seq": 12}
    event = event_payload(DEV, "downloading", model="clf", version=3, seq=5,
                          progress={"chunks_done": 2, "chunks_total": 9}, **numbered)  # fmt: skip
    telemetry = telemetry_payload(DEV, {"requests": {"total": 3}, "uptime_s": 1.5, **numbered})
    for topic, payload in ((TOPICS.state(DEV), state), (TOPICS.events(DEV), event),
                           (TOPICS.telemetry(DEV), telemetry)):  # fmt: skip
        await ingest.handle(MqttMessage(topic, payload, False))
    assert ingest.stored == {"state": 1, "events": 1, "telemetry": 1}
    assert ingest.dropped == {}
    device = await api.ctx.storage.get_device(DEV)
    assert device.state == json.loads(state)
    assert device_view(device)["models"]["clf"]["active"] == 2
    assert (await api.ctx.storage.events(DEV))[0].body == json.loads(event)
    assert (await api.ctx.storage.telemetry(DEV))[0].body == json.loads(telemetry)


async def test_telemetry_over_its_cap_loses_its_feature_summaries_first(
    api: Api, ingest: DeviceIngest
) -> None:
    # The most docs/telemetry.md allows one model: 16 inputs of 64 columns, seven statistics.
    stats = ("count", "mean", "std", "min", "max", "nan_count", "inf_count")
    summary = {"rows": 8, **{stat: [0.1234567] * 64 for stat in stats}}
    features = {f"in{n}": summary for n in range(16)}
    body = {"models": {"clf": {"batches": {"count": 2}, "features": features}}, "uptime_s": 9.0}
    payload = telemetry_payload(DEV, body)
    assert len(payload) > api.ctx.config.ingest.max_telemetry_bytes
    await ingest.handle(MqttMessage(TOPICS.telemetry(DEV), payload, False))
    (report,) = await api.ctx.storage.telemetry(DEV)
    assert report.body["features_dropped"] is True
    assert report.body["models"] == {"clf": {"batches": {"count": 2}}}
    assert report.body["uptime_s"] == 9.0
