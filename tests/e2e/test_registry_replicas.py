"""Two registry replicas on one PostgreSQL and one blob directory, behind HAProxy.

The operator talks to the balancer only. One replica is killed (SIGKILL) while the devices are
in probation: `deploy --wait` goes on through the other, every device activates, each event is
stored once, and the duties that run on one replica at a time move to the survivor. With
shared subscriptions each device event reaches one replica; with plain ones every replica
receives it and the database still stores it once.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.e2e.conftest import CHUNK, Models
from tests.support.agent import AgentProcess
from tests.support.broker import LOCALHOST, BrokerFactory
from tests.support.fleet import TOPICS
from tests.support.haproxy import balancer_config
from tests.support.postgres import Schema, connect, new_schema
from tests.support.registry import BIN, RegistryProcess, cli, cli_json
from tests.support.replicas import DUTIES, ReplicaSet

DEVICES = ("rep-a", "rep-b", "rep-c")
# Long enough for the kill to land while every device is in probation: the activations
# are then reported after the replica died, and stored by the other one.
AGENT_TOML = "[updates]\nprobation_s = 8\nprobation_requests = 100000\n"
WAIT_S = 120.0


class EventTap:
    """Every device event the broker carries, as a registry-side client sees them."""

    def __init__(self, port: int, password: str) -> None:
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"tap-{time.monotonic_ns()}",
            protocol=mqtt.MQTTv311,
        )  # fmt: skip
        client.username_pw_set("registry", password)
        client.on_connect = lambda c, *_: c.subscribe(TOPICS.device_messages("events"), qos=1)
        client.on_subscribe = lambda *_: self._subscribed.set()
        client.on_message = self._on_message
        client.connect(LOCALHOST, port)
        client.loop_start()
        self._client = client
        if not self._subscribed.wait(20):
            raise AssertionError("the event tap could not subscribe")

    def _on_message(self, _c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        body = json.loads(message.payload)
        with self._lock:
            self.events.append({**body, "topic_device": message.topic.split("/")[-2]})

    def keys(self) -> set[tuple[str, str, int]]:
        """(device, msg_epoch, msg_seq) of each event seen, resends counted once."""
        with self._lock:
            return {(e["topic_device"], e["msg_epoch"], e["msg_seq"]) for e in self.events}

    def count(self) -> int:
        """Event messages seen, resends included."""
        with self._lock:
            return len(self.events)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture(scope="module")
def schema(postgres: str) -> Iterator[Schema]:
    with new_schema() as created:
        yield created


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory, schema: Schema) -> Iterator[ReplicaSet]:
    root = tmp_path_factory.mktemp("replicas")
    factory = BrokerFactory(root / "brokers")
    replica_set = ReplicaSet(root, factory, schema)
    replica_set.start(count=2, chunk_size_kib=CHUNK // 1024, shared=True)
    yield replica_set
    replica_set.stop()
    factory.close()


@pytest.fixture(scope="module")
def tap(replicas: ReplicaSet) -> Iterator[EventTap]:
    password = (replicas.first_home / "secrets" / "mqtt-password").read_text().strip()
    event_tap = EventTap(replicas.broker_port, password)
    yield event_tap
    event_tap.close()


@pytest.fixture(scope="module")
def fleet_agents(replicas: ReplicaSet, tap: EventTap) -> Iterator[dict[str, AgentProcess]]:
    started = {}
    for device in DEVICES:
        bundle = replicas.root / "bundles" / device
        added = cli("devices", "add", device, "--group", "lab", "--out", str(bundle),
                    *replicas.api())  # fmt: skip
        assert "broker credentials added on the running broker" in added.stdout, added.stderr
        config = bundle / "device.toml"
        config.write_text(config.read_text() + "\n" + AGENT_TOML)
        started[device] = AgentProcess(config, replicas.root / "states" / device)
        started[device].start()
    yield started
    for agent in started.values():
        agent.kill()


def test_a_replica_killed_mid_deploy_changes_nothing_for_the_operator(
    replicas: ReplicaSet, models: Models, tap: EventTap, fleet_agents: dict[str, AgentProcess]
) -> None:
    first = cli_json("push", str(models.v1), "--name", "clf", *replicas.api())["version"]
    version = cli_json("push", str(models.v2), "--name", "clf", *replicas.api())["version"]
    for name, replica in replicas.replicas.items():  # each one answers from the shared state
        [model] = _api(replica, "/v1/models")["models"]
        assert (model["name"], model["latest_version"]) == ("clf", version), name
    _finish(_deploy_and_wait(replicas, first))  # the first install: no probation
    holders = _wait_for(lambda: _all_held(replicas), "every duty to be held")

    deploy = _deploy_and_wait(replicas, version)
    for agent in fleet_agents.values():  # every device is in probation now
        agent.wait_for_version("clf", version, timeout=WAIT_S)
    assert deploy.poll() is None, "deploy --wait returned before the probation ended"
    # Each event went to one replica of the shared subscription, not to both.
    _wait_for(
        lambda: _received(replicas) == tap.count() or None,
        "each event to be received once",
        lambda: f"received {_received(replicas)}, sent {tap.count()}",
    )
    served = replicas.balancer.server_stats()
    assert all(int(served[name]["hrsp_2xx"]) > 0 for name in replicas.replicas), served

    victim = holders["maintenance"]
    [survivor] = [name for name in replicas.replicas if name != victim]
    killed = replicas.replicas[victim]
    assert killed.process is not None
    killed.process.kill()
    killed.process.wait()

    out = _finish(deploy)
    assert f"{len(DEVICES)}/{len(DEVICES)} activated" in out, out
    moved = _wait_for(lambda: _all_held(replicas, by=survivor), f"the duties to move to {survivor}")
    replicas.balancer.wait_for_status(victim, "DOWN")
    deployment = max(
        cli_json("deployments", "list", *replicas.api())["deployments"], key=lambda d: d["id"]
    )
    shown = cli_json("deployments", "show", str(deployment["id"]), *replicas.api())
    assert {d["device_id"]: d["status"] for d in shown["progress"]["devices"]} == dict.fromkeys(
        DEVICES, "activated"
    )
    _assert_stored_once(replicas.schema, tap)
    activated = _stored_events(replicas.schema, "activated")
    assert sorted(d for d, v in activated if v == version) == sorted(DEVICES)  # once each

    # The killed replica comes back: it publishes the retained state from the same records,
    # so the devices see the very assignments they hold, not new ones.
    before = {d: _retained_assignment(replicas, d) for d in DEVICES}
    killed.start()
    replicas.balancer.wait_for_status(victim, "UP")
    assert {d: _retained_assignment(replicas, d) for d in DEVICES} == before
    assert replicas.duty_holders() == moved  # the survivor keeps its duties


def test_with_plain_subscriptions_every_replica_stores_each_event_once(
    replicas: ReplicaSet, tap: EventTap, fleet_agents: dict[str, AgentProcess]
) -> None:
    replicas.set_shared_subscriptions(False)
    _assert_stored_once(replicas.schema, tap)  # nothing is left to be sent again
    sent_before = tap.count()
    received_before = {name: _received_by(r) for name, r in replicas.replicas.items()}
    _finish(_deploy_and_wait(replicas, 1))  # back to the first version, through probation
    # Both replicas receive every event: one stores it, the other finds it stored already.
    # A message resent for want of an ack arrives again, so each receives at least as many.
    for name, replica in replicas.replicas.items():
        _wait_for(
            lambda r=replica, n=name: (
                _received_by(r) - received_before[n]  # type: ignore[misc]
                >= tap.count() - sent_before
                or None
            ),
            f"{name} to receive every event",
            lambda r=replica, n=name: (  # type: ignore[misc]
                f"received {_received_by(r) - received_before[n]}, sent {tap.count() - sent_before}"
            ),
        )
    _assert_stored_once(replicas.schema, tap)
    activated = _stored_events(replicas.schema, "activated")
    assert sorted(d for d, v in activated if v == 1) == sorted(DEVICES * 2)  # two deploys of v1


def _finish(deploy: subprocess.Popen[str]) -> str:
    """Wait for `deploy --wait` to end; fail unless it says every device activated."""
    out, err = deploy.communicate(timeout=WAIT_S + 30)
    assert deploy.returncode == 0, f"deploy --wait failed:\n{out}\n{err}"
    return out


def test_the_balancer_config_is_the_one_operations_md_shows() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    shown = doc.split("```haproxy\n", 1)[1].split("```", 1)[0]
    servers = {"r1": 8081, "r2": 8082}
    assert shown == balancer_config(8080, servers, Path("/run/haproxy/registry.sock"))


def _deploy_and_wait(replicas: ReplicaSet, version: int) -> subprocess.Popen[str]:
    argv = [str(BIN / "model-registry"), "deploy", "clf", str(version), "--group", "lab"]
    argv += ["--wait", "--timeout", str(WAIT_S), *replicas.api()]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _api(replica: RegistryProcess, path: str) -> Any:
    token = (replica.home / "secrets" / "cli-token").read_text().strip()
    request = urllib.request.Request(  # noqa: S310 - the test registry's http URL
        f"{replica.url}{path}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        body = response.read().decode()
    return body if path == "/metrics" else json.loads(body)


def _counter(text: str, line_prefix: str) -> int:
    for line in text.splitlines():
        if line.startswith(line_prefix):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


def _received_by(replica: RegistryProcess) -> int:
    """Device events this replica took from the broker: stored, or found stored already."""
    text = _api(replica, "/metrics")
    stored = _counter(text, 'model_registry_ingest_stored_total{kind="events"}')
    return stored + _counter(text, 'model_registry_ingest_dropped_total{reason="duplicate"}')


def _received(replicas: ReplicaSet) -> int:
    return sum(_received_by(r) for r in replicas.replicas.values())


def _all_held(replicas: ReplicaSet, by: str | None = None) -> dict[str, str] | None:
    """Who holds each duty, once every duty is held (by replica `by`, if given)."""
    holders = replicas.duty_holders()
    if set(holders) != set(DUTIES) or (by is not None and set(holders.values()) != {by}):
        return None
    return holders


def _assert_stored_once(schema: Schema, tap: EventTap) -> None:
    """The stored events are those the devices sent, each in one row."""
    devices = list(DEVICES)
    query = "SELECT device_id, msg_epoch, msg_seq FROM device_events WHERE device_id = ANY(%s)"

    def rows() -> list[tuple[str, str, int]]:
        with connect(schema.url) as conn:
            return [(str(d), str(e), int(s)) for d, e, s in conn.execute(query, (devices,))]

    _wait_for(lambda: set(rows()) == tap.keys() or None, "every event sent to be stored")
    stored = rows()
    assert len(stored) == len(set(stored)) == len(tap.keys())


def _stored_events(schema: Schema, kind: str) -> list[tuple[str, int]]:
    query = (
        "SELECT device_id, (body::jsonb ->> 'version')::int FROM device_events"
        " WHERE body::jsonb ->> 'event' = %s AND body::jsonb ->> 'model' = 'clf'"
    )
    with connect(schema.url) as conn:
        return [(str(d), int(v)) for d, v in conn.execute(query, (kind,))]


def _retained_assignment(replicas: ReplicaSet, device: str) -> bytes:
    """The assignment the broker holds for `device`, as a newly connecting device gets it."""
    password = (replicas.first_home / "secrets" / "mqtt-password").read_text().strip()
    got = threading.Event()
    payload: list[bytes] = []
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"probe-{time.monotonic_ns()}",
        protocol=mqtt.MQTTv311,
    )  # fmt: skip
    client.username_pw_set("registry", password)
    client.on_connect = lambda c, *_: c.subscribe(TOPICS.assignment(device), qos=1)

    def on_message(_c: Any, _u: Any, message: mqtt.MQTTMessage) -> None:
        payload.append(bytes(message.payload))
        got.set()

    client.on_message = on_message
    client.connect(LOCALHOST, replicas.broker_port)
    client.loop_start()
    try:
        if not got.wait(20):
            raise AssertionError(f"no retained assignment for {device}")
    finally:
        client.disconnect()
        client.loop_stop()
    return payload[0]


def _wait_for(condition: Any, what: str, seen: Any = None, timeout: float = 60.0) -> Any:
    """Poll `condition` until it returns something; fail saying `what`, and `seen()` if given."""
    deadline = time.monotonic() + timeout
    while (result := condition()) is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}" + (f": {seen()}" if seen else ""))
        time.sleep(0.2)
    return result
