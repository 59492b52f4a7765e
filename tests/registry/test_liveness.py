"""Whether the registry shows a device online: its will, and whether it still hears from it.

The rule is checked case by case on records, then through the real ingest and API, with the
registry's clock moved by the test.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edge_protocol import Topics
from edge_protocol.messages import offline_payload, state_payload, telemetry_payload
from model_registry.mqtt.client import MqttMessage
from model_registry.services.devices import add_device
from model_registry.services.fleet import connection
from model_registry.services.ingest import DeviceIngest
from model_registry.storage import DeviceRecord
from tests.registry.conftest import Api

TOPICS = Topics()
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _device(
    *, online: bool = True, seen_s_ago: float | None = 0, interval: Any = None
) -> DeviceRecord:
    state: dict[str, Any] = {"online": True, "models": {}, "trust": {}}
    if interval is not None:
        state["telemetry_interval_s"] = interval
    seen = None if seen_s_ago is None else T0 - timedelta(seconds=seen_s_ago)
    return DeviceRecord("dev-1", "lab", T0, "hash", online=online, last_seen=seen, state=state)


# name, device, expected connection at T0
RULES: list[tuple[str, DeviceRecord, str]] = [
    ("never-heard-from", DeviceRecord("dev-1", "lab", T0, "hash"), "offline"),
    ("just-reported", _device(), "online"),
    ("the-will-arrived", _device(online=False), "offline"),
    ("the-will-wins-over-a-recent-message", _device(online=False, seen_s_ago=1), "offline"),
    ("own-interval-within-3-and-grace", _device(interval=10, seen_s_ago=40), "online"),
    ("own-interval-missed-3-and-grace", _device(interval=10, seen_s_ago=41), "stale"),
    ("default-interval-within", _device(seen_s_ago=100), "online"),
    ("default-interval-missed", _device(seen_s_ago=101), "stale"),
    ("long-interval", _device(interval=3600, seen_s_ago=3 * 3600), "online"),
    ("online-but-never-seen", _device(seen_s_ago=None), "stale"),
    ("interval-not-a-number", _device(interval="soon", seen_s_ago=101), "stale"),
    ("interval-a-boolean", _device(interval=True, seen_s_ago=101), "stale"),
    ("interval-negative", _device(interval=-5, seen_s_ago=50), "online"),
    ("interval-absurdly-long", _device(interval=1e12, seen_s_ago=86_400 * 4), "stale"),
]


@pytest.mark.parametrize(("device", "expected"), [c[1:] for c in RULES], ids=[c[0] for c in RULES])
def test_connection_rules(device: DeviceRecord, expected: str) -> None:
    assert connection(device, T0) == expected


@dataclass
class Clock:
    """The registry's clock, moved by the test."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


async def _report(api: Api, ingest: DeviceIngest, kind: str, payload: bytes) -> None:
    topic = f"{TOPICS.prefix}/devices/dev-1/{kind}"
    await ingest.handle(MqttMessage(topic, payload, False))


async def _views(api: Api) -> tuple[dict[str, Any], dict[str, Any], str]:
    headers = api.auth()
    listed = await (await api.client.get("/v1/devices", headers=headers)).json()
    detail = await (await api.client.get("/v1/devices/dev-1", headers=headers)).json()
    metrics = await (await api.client.get("/metrics", headers=headers)).text()
    (row,) = listed["devices"]
    return row, detail, metrics


async def test_the_views_and_metrics_agree_on_stale_devices(api: Api) -> None:
    clock = Clock(datetime.now(UTC).replace(microsecond=0))
    api.ctx.clock = clock
    ingest = DeviceIngest(api.ctx, TOPICS)
    await add_device(api.ctx, "dev-1", group="lab")
    state = state_payload("dev-1", agent_version="t", models={}, trust={}, telemetry_interval_s=5)
    await _report(api, ingest, "state", state)
    row, detail, metrics = await _views(api)
    assert (row["online"], row["connection"]) == (True, "online")
    assert 'model_registry_devices{state="online"} 1' in metrics

    clock.now += timedelta(seconds=26)  # 3 intervals of 5 s and 10 s of grace have passed
    row, detail, metrics = await _views(api)
    assert (row["online"], row["connection"]) == (False, "stale")
    assert (detail["online"], detail["connection"]) == (False, "stale")
    assert 'model_registry_devices{state="stale"} 1' in metrics
    assert 'model_registry_devices{state="online"} 0' in metrics

    await _report(api, ingest, "telemetry", telemetry_payload("dev-1", {"interval_s": 5.0}))
    row, _detail, _metrics = await _views(api)
    assert (row["online"], row["connection"]) == (True, "online"), "heard from again"

    await _report(api, ingest, "state", offline_payload("dev-1"))
    row, _detail, metrics = await _views(api)
    assert (row["online"], row["connection"]) == (False, "offline")
    assert 'model_registry_devices{state="offline"} 1' in metrics
