"""The fleet view end to end, on mosquitto run from the files `broker-config` writes.

Three agents are followed by `model-registry deploy --wait`; one is killed (no DISCONNECT, so
the broker publishes its will) and restarted. Then 1,000 devices, provisioned straight through
storage, report state and telemetry at once from a few clients holding the registry's own
credentials, and the registry must store every message within a generous bound.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_protocol import utc_now
from edge_protocol.messages import state_payload, telemetry_payload
from model_registry.mqtt.credentials import hash_password
from model_registry.storage import DeviceRecord, SQLiteStorage
from tests.e2e.conftest import Models, start_agent
from tests.support.agent import AgentProcess
from tests.support.broker import LOCALHOST
from tests.support.fleet import TOPICS, Fleet
from tests.support.registry import cli, cli_json

# A short probation: `--wait` waits for it, and nothing sends the agents 20 requests here.
QUICK_PROBATION = "[updates]\nprobation_s = 1\n"
BURST_DEVICES = 1000
BURST_CLIENTS = 20
BURST_BOUND_S = 60.0  # generous: under 1 s on a 2-CPU VM (docs/registry.md, "Bursts")


@pytest.fixture(scope="module")
def release(fleet: Fleet, models: Models) -> int:
    """Version 1 of `clf`, pushed once for the module."""
    version: int = fleet.push(models.v1, "clf")["version"]
    return version


def test_wait_sees_three_agents_activate_and_the_will_marks_a_killed_one_offline(
    fleet: Fleet, release: int, agents: list[AgentProcess]
) -> None:
    trio = [start_agent(fleet, agents, f"trio-{n}", "trio", QUICK_PROBATION) for n in range(3)]
    done = cli("deploy", "clf", str(release), "--group", "trio", "--wait", *fleet.api())
    assert "3/3 activated: 3 activated" in done.stdout
    assert all(agent.serving_version("clf") == release for agent in trio)

    victim = trio[1]
    victim.kill()
    gone = _until(fleet, "trio-1", lambda d: not d["online"])
    assert gone["models"]["clf"]["active"] == release, "the last report is kept"
    listing = {d["device_id"]: d["online"] for d in _devices(fleet, "trio")}
    assert listing == {"trio-0": True, "trio-1": False, "trio-2": True}

    victim.start()
    back = _until(fleet, "trio-1", lambda d: d["online"] and d["last_seen"] > gone["last_seen"])
    assert back["models"]["clf"] == {
        "assigned": release, "active": release, "phase": "idle", "last_error": None,
    }  # fmt: skip


def test_a_burst_of_1000_devices_is_stored_without_falling_behind(
    fleet: Fleet, record_property: Callable[[str, object], None]
) -> None:
    devices = [f"burst-{n:04}" for n in range(BURST_DEVICES)]
    asyncio.run(_provision_through_storage(fleet, devices))
    before = _stored(fleet)
    password = (fleet.home / "secrets" / "mqtt-password").read_text().strip()

    started = time.monotonic()
    _publish_at_once(fleet.port, password, devices)
    published = time.monotonic() - started
    expected = {kind: before.get(kind, 0) + BURST_DEVICES for kind in ("state", "telemetry")}
    while not _reached(_stored(fleet), expected):
        assert time.monotonic() - started < BURST_BOUND_S, f"stored {_stored(fleet)} of {expected}"
        time.sleep(0.05)
    elapsed = time.monotonic() - started

    figure = (
        f"{BURST_DEVICES} devices, {2 * BURST_DEVICES} messages from {BURST_CLIENTS} clients: "
        f"published in {published:.2f} s, all stored {elapsed:.2f} s after the first"
    )
    print(figure)
    record_property("ingest_burst", figure)
    stored = asyncio.run(_burst_records(fleet, devices))
    assert stored == (BURST_DEVICES, BURST_DEVICES)
    assert "being dropped" not in fleet.broker.process.log_text()
    assert "storage_error" not in _metrics(fleet)


# --- helpers ---------------------------------------------------------------------------------


def _api(fleet: Fleet, path: str) -> Any:
    token = (fleet.home / "secrets" / "cli-token").read_text().strip()
    request = urllib.request.Request(  # noqa: S310 - the test registry's http URL
        fleet.registry.url + path, headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read()) if path != "/metrics" else response.read().decode()


def _devices(fleet: Fleet, group: str) -> list[dict[str, Any]]:
    listing: dict[str, Any] = cli_json("devices", "list", "--group", group, *fleet.api())
    devices: list[dict[str, Any]] = listing["devices"]
    return devices


def _until(
    fleet: Fleet, device: str, condition: Callable[[dict[str, Any]], bool], timeout: float = 30
) -> dict[str, Any]:
    """Poll GET /v1/devices/{device} until `condition` holds; return the device."""
    deadline = time.monotonic() + timeout
    while True:
        view: dict[str, Any] = _api(fleet, f"/v1/devices/{device}")
        if condition(view):
            return view
        assert time.monotonic() < deadline, f"{device} never got there: {view}"
        time.sleep(0.1)


def _metrics(fleet: Fleet) -> str:
    text: str = _api(fleet, "/metrics")
    return text


def _stored(fleet: Fleet) -> dict[str, int]:
    prefix = 'model_registry_ingest_stored_total{kind="'
    counts = {}
    for line in _metrics(fleet).splitlines():
        if line.startswith(prefix):
            kind, _, value = line.removeprefix(prefix).partition('"} ')
            counts[kind] = int(value)
    return counts


def _reached(counts: dict[str, int], expected: dict[str, int]) -> bool:
    return all(counts.get(kind, 0) >= value for kind, value in expected.items())


async def _provision_through_storage(fleet: Fleet, devices: list[str]) -> None:
    password_hash = hash_password("unused")  # the burst speaks with the registry's credentials
    now = utc_now().replace(microsecond=0)
    async with SQLiteStorage(fleet.home / "registry.db") as storage:
        for device in devices:
            await storage.add_device(DeviceRecord(device, "burst", now, password_hash))


async def _burst_records(fleet: Fleet, devices: list[str]) -> tuple[int, int]:
    """(devices online with a state, devices with one telemetry report), from storage."""
    async with SQLiteStorage(fleet.home / "registry.db") as storage:
        online = sum(1 for d in await storage.devices("burst") if d.online and d.state)
        reports = [len(await storage.telemetry(device)) for device in devices]
    return online, sum(1 for n in reports if n == 1)


def _publish_at_once(port: int, password: str, devices: list[str]) -> None:
    """Publish each device's state and telemetry from BURST_CLIENTS clients started together."""
    barrier = threading.Barrier(BURST_CLIENTS)
    threads = [
        threading.Thread(target=_publish, args=(port, password, devices[n::BURST_CLIENTS], barrier))
        for n in range(BURST_CLIENTS)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)


def _publish(port: int, password: str, devices: list[str], barrier: threading.Barrier) -> None:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"burst-{devices[0]}", protocol=mqtt.MQTTv311
    )
    client.username_pw_set("registry", password)
    client.max_inflight_messages_set(2 * len(devices))
    client.connect(LOCALHOST, port)
    client.loop_start()
    try:
        barrier.wait(timeout=30)
        sent = []
        for device in devices:
            sent.append(client.publish(TOPICS.state(device), _state(device), qos=1, retain=True))
            sent.append(client.publish(TOPICS.telemetry(device), _telemetry(device), qos=1))
        for message in sent:
            message.wait_for_publish(timeout=60)
    finally:
        client.disconnect()
        client.loop_stop()


def _state(device: str) -> bytes:
    active = {"version": 1, "sha256": "a" * 64}
    models = {"clf": {"active": active, "previous": None, "phase": "idle", "last_error": None}}
    trust = {"root_version": 1, "assignment_seq": 1, "stale": False}
    return state_payload(device, agent_version="burst", models=models, trust=trust)


def _telemetry(device: str) -> bytes:
    body = {
        "msg_epoch": "b0857c0ffee",
        "msg_seq": 1,
        "interval_s": 30,
        "models": {"clf": {"requests": 120, "errors": 0, "latency_ms": {"p50": 0.4, "p99": 1.9}}},
        "process": {"rss_bytes": 52_000_000, "cpu_percent": 3.5},
    }
    return telemetry_payload(device, body)
