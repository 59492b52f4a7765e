"""The registry and its devices on a three-node NATS cluster (JetStream, MQTT listener).

Two registry replicas on PostgreSQL behind HAProxy connect to node 1; the devices are spread
over nodes 2 and 3, each listing both (`[mqtt] urls`, its own node first). The device logins go
into the nodes' config, which they reload, as docs/operations.md section 12 says. Each device
reaches each node through a relay of its own that slows what the node sends it, so a download
takes seconds. A deploy through one replica reaches the devices on every node. Then node 3 is
killed (SIGKILL) mid-download: its devices move to node 2 and finish there, writing each chunk
once, without starting over.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Models
from tests.support.agent import AgentProcess
from tests.support.broker import LOCALHOST, BrokerFactory
from tests.support.models import build_classifier
from tests.support.nats import NatsCluster
from tests.support.postgres import Schema, new_schema
from tests.support.registry import BIN, cli_json
from tests.support.relay import RelayThread
from tests.support.replicas import ReplicaSet

CHUNK_KIB = 1  # every artifact spans dozens of chunks
# Device -> index of its first node: one on node 2, two on node 3.
HOMES = {"nats-a": 1, "nats-b": 2, "nats-c": 2}
AGENT_TOML = """
[updates]
probation_s = 2
probation_requests = 100000
"""
RATE = 16 * 1024  # bytes per second from a node to a device: a download takes seconds
CRAWL = 128  # bytes per second: a chunk every few seconds, from a node about to be killed
# Bytes per second from node 3 until a device is a quarter in: a 1 KiB chunk every 0.1 s or so,
# slow enough that the test sees every device there mid-download (at full speed a download of
# dozens of chunks ends between two looks), fast enough for the release document.
PACE = 10 * 1024
WINDOW = 16  # the agent's chunk subscriptions at once (docs/agent.md, "Lost links")
WAIT_S = 240.0  # a loaded 2-core machine: every wait is for a condition, never a sleep
# Each chunk topic a device subscribes costs NATS a JetStream consumer: downloads are slow.
pytestmark = pytest.mark.timeout(900)


@dataclass(frozen=True)
class _Node:
    """What a relay needs of a broker: where it listens."""

    host: str
    port: int


@dataclass
class Device:
    """A running agent and its relays, one per node it lists (node index -> relay)."""

    agent: AgentProcess
    relays: dict[int, RelayThread]

    def downloads(self) -> dict[str, int]:
        """The agent's own download counters (`GET /v1/status`)."""
        counters: dict[str, int] = self.agent.get("/v1/status")["downloads"]
        return counters


@pytest.fixture(scope="module")
def schema(postgres: str) -> Iterator[Schema]:
    with new_schema() as created:
        yield created


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsCluster]:
    nats = NatsCluster(tmp_path_factory.mktemp("nats"))
    yield nats
    nats.stop()


@pytest.fixture(scope="module")
def replicas(
    tmp_path_factory: pytest.TempPathFactory, schema: Schema, cluster: NatsCluster
) -> Iterator[ReplicaSet]:
    root = tmp_path_factory.mktemp("replicas")
    factory = BrokerFactory(root / "brokers")  # unused: the broker is the cluster
    replica_set = ReplicaSet(root, factory, schema)
    # NATS 2.9 has no `$share/` subscriptions: every replica receives every device message,
    # and the idempotent ingest stores each once (docs/operations.md section 12).
    replica_set.init(2, chunk_size_kib=CHUNK_KIB, shared=False)
    password = (replica_set.first_home / "secrets" / "mqtt-password").read_text().strip()
    cluster.users = {"registry": password}
    cluster.start()
    try:
        replica_set.start_replicas(cluster.nodes[0].mqtt_url)
        yield replica_set
    finally:
        replica_set.stop()
        factory.close()


@pytest.fixture(scope="module")
def devices(replicas: ReplicaSet, cluster: NatsCluster) -> Iterator[dict[str, Device]]:
    bundles = {device: replicas.root / "bundles" / device for device in HOMES}
    add = [str(BIN / "model-registry"), "devices", "add"]
    adding = [
        subprocess.Popen(
            [*add, device, "--group", "nats", "--out", str(bundle), *replicas.api()],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for device, bundle in bundles.items()
    ]
    for process in adding:  # NATS has no dynamic-security plugin: each waits for its answer
        out, err = process.communicate(timeout=120)
        assert process.returncode == 0, err
        assert "or give it its credentials on that broker yourself" in err, out + err
    # The operator's part on NATS: the device logins go into the nodes' config, then reload.
    users = dict(cluster.users)
    for device, bundle in bundles.items():
        users[device] = (bundle / "mqtt-password").read_text().strip()
    cluster.set_users(users)
    started: dict[str, Device] = {}
    try:
        for device, home in HOMES.items():
            started[device] = _start_device(replicas.root, bundles[device], cluster, home)
        yield started
    finally:
        for running in started.values():
            running.agent.kill()
            for relay in running.relays.values():
                relay.__exit__(None, None, None)


def _start_device(root: Path, bundle: Path, cluster: NatsCluster, home: int) -> Device:
    """The agent of `bundle` on node `home` first, then the other of nodes 2 and 3."""
    order = [home, 3 - home]  # node indexes 1 and 2: the second and third node
    relays = {
        n: RelayThread(_Node(LOCALHOST, cluster.nodes[n].ports.mqtt), to_client_bytes_per_s=RATE)
        for n in order
    }
    for relay in relays.values():
        relay.__enter__()
    urls = ", ".join(f'"{relays[n].call(lambda r: r.url)}"' for n in order)
    config = bundle / "device.toml"
    text = re.sub(r'(?m)^url = "mqtt://[^"]*"$', f"urls = [{urls}]", config.read_text())
    config.write_text(text + AGENT_TOML)
    agent = AgentProcess(config, root / "states" / bundle.name)
    agent.start()
    return Device(agent, relays)


def test_a_deploy_through_one_replica_reaches_the_devices_on_every_node(
    replicas: ReplicaSet, models: Models, devices: dict[str, Device]
) -> None:
    one = replicas.replicas["r1"]
    api = ("--url", one.url, "--home", str(replicas.first_home))
    version = cli_json("push", str(models.v1), "--name", "clf", *api)["version"]
    argv = [str(BIN / "model-registry"), "deploy", "clf", str(version), "--group", "nats"]
    deploy = subprocess.run(
        [*argv, "--wait", "--timeout", str(WAIT_S), *api],
        capture_output=True,
        text=True,
        timeout=WAIT_S + 60,
        check=False,
    )
    assert deploy.returncode == 0, f"deploy --wait failed:\n{deploy.stdout}\n{deploy.stderr}"
    assert f"{len(HOMES)}/{len(HOMES)} activated" in deploy.stdout, deploy.stdout
    for device in devices.values():
        device.agent.wait_for_version("clf", version, timeout=WAIT_S)
        assert device.agent.infer("clf", models.rows)[0] == 200


def test_a_node_killed_mid_download_sends_its_devices_to_another_that_finishes(
    replicas: ReplicaSet, cluster: NatsCluster, devices: dict[str, Device], tmp_path: Path
) -> None:
    # Last in the module: node 3 stays dead.
    path = tmp_path / "big.onnx"
    build_classifier(path, n_features=256, n_samples=400)  # 84 chunks
    release = cli_json("push", str(path), "--name", "big", *replicas.api())
    chunks = -(-release["size"] // (CHUNK_KIB * 1024))
    victims = {name: devices[name] for name, home in HOMES.items() if home == 2}

    def on_node_3(name: str) -> bool:
        return bool(victims[name].relays[2].call(lambda r: r.open))

    # A device that lost node 3 earlier (a keep-alive missed on a loaded machine) went on to
    # node 2 and stays there: cutting that link sends it to the next URL, node 3 again.
    for name, victim in victims.items():
        if not on_node_3(name):
            victim.relays[1].call(lambda r: r.cut())
    _wait_for(lambda: all(on_node_3(n) for n in victims), "the devices of node 3 on it",
              lambda: {n: on_node_3(n) for n in victims})  # fmt: skip
    # Both links of each victim paced, then slowed to a crawl: a device whose link to node 3
    # dropped on its own before the kill (it went on to node 2, its next URL) is held
    # mid-download there too, instead of finishing at full speed before the check sees it.
    for victim in victims.values():
        for relay in victim.relays.values():
            relay.call(lambda r: setattr(r, "to_client_bytes_per_s", PACE))
    before = {name: device.downloads() for name, device in devices.items()}
    argv = [str(BIN / "model-registry"), "deploy", "big", str(release["version"])]
    argv += ["--group", "nats", "--wait", "--timeout", str(WAIT_S), *replicas.api()]
    deploy = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def written(name: str) -> int:
        return devices[name].downloads()["chunks_written"] - before[name]["chunks_written"]

    def all_held_mid_download() -> bool:
        """Slow each device on node 3 from its pace to a crawl once it is a quarter in: so that
        every one of them, whatever its pace, is still mid-download when the node dies."""
        progress = {name: written(name) for name in victims}
        for name, count in progress.items():
            if count >= chunks // 4:
                for relay in victims[name].relays.values():
                    relay.call(lambda r: setattr(r, "to_client_bytes_per_s", CRAWL))
        return all(chunks // 4 <= count < chunks for count in progress.values())

    _wait_for(
        all_held_mid_download,
        "the devices on node 3 to be a quarter into the download",
        lambda: {name: written(name) for name in victims},
    )
    cluster.nodes[2].kill()  # SIGKILL: no goodbye to its peers or its clients
    for victim in victims.values():  # new connections to it are refused, as to a dead host
        victim.relays[2].call(lambda r: r.down())
        victim.relays[1].call(lambda r: setattr(r, "to_client_bytes_per_s", RATE))
    halfway = {name: written(name) for name in victims}

    out, err = deploy.communicate(timeout=WAIT_S + 60)
    assert deploy.returncode == 0, f"{out}\n{err}"
    assert f"{len(HOMES)}/{len(HOMES)} activated" in out, out
    for name, device in devices.items():
        device.agent.wait_for_version("big", release["version"], timeout=WAIT_S)
        now = device.downloads()
        fetched = {k: now[k] - before[name][k] for k in ("chunks_written", "chunks_received")}
        # Each chunk written once: the download went on from where it was, never over again.
        assert fetched["chunks_written"] == chunks, (name, chunks, fetched)
        # What crossed the link: at most the window in flight again (docs/agent.md).
        assert chunks <= fetched["chunks_received"] <= chunks + WINDOW, (name, chunks, fetched)
        if name in victims:  # it finished on node 2, after node 3 died mid-download
            assert 0 < halfway[name] < chunks, (name, halfway)
            assert device.relays[1].call(lambda r: r.connections) >= 1, name


def _wait_for(
    condition: Callable[[], bool], what: str, seen: Callable[[], Any], timeout: float = WAIT_S
) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}: {seen()}")
        time.sleep(0.05)
