"""The registry and its devices on a three-node NATS cluster (JetStream, MQTT listener).

Two registry replicas on PostgreSQL behind HAProxy connect to node 1; the devices are spread
over nodes 2 and 3, each listing both (`[mqtt] urls`, its own node first). The device logins go
into the nodes' config, which they reload, as docs/operations.md section 12 says. A deploy
through one replica reaches the devices on every node.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Models
from tests.support.agent import AgentProcess
from tests.support.broker import BrokerFactory
from tests.support.nats import NatsCluster
from tests.support.postgres import Schema, new_schema
from tests.support.registry import BIN, cli_json
from tests.support.replicas import ReplicaSet

CHUNK_KIB = 1  # every artifact spans dozens of chunks
# Device -> index of its first node: one on node 2, two on node 3.
HOMES = {"nats-a": 1, "nats-b": 2, "nats-c": 2}
AGENT_TOML = """
[updates]
probation_s = 2
probation_requests = 100000
"""
WAIT_S = 240.0  # a loaded 2-core machine: every wait is for a condition, never a sleep
# Each chunk topic a device subscribes costs NATS a JetStream consumer: downloads are slow.
pytestmark = pytest.mark.timeout(600)


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
def devices(replicas: ReplicaSet, cluster: NatsCluster) -> Iterator[dict[str, AgentProcess]]:
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
    started: dict[str, AgentProcess] = {}
    try:
        for device, home in HOMES.items():
            started[device] = _start_agent(replicas.root, bundles[device], cluster, home)
        yield started
    finally:
        for agent in started.values():
            agent.kill()


def _start_agent(root: Path, bundle: Path, cluster: NatsCluster, home: int) -> AgentProcess:
    """The agent of `bundle` on node `home` first, then the other of nodes 2 and 3."""
    order = [home, 3 - home]  # node indexes 1 and 2: the second and third node
    urls = ", ".join(f'"{cluster.nodes[n].mqtt_url}"' for n in order)
    config = bundle / "device.toml"
    text = re.sub(r'(?m)^url = "mqtt://[^"]*"$', f"urls = [{urls}]", config.read_text())
    config.write_text(text + AGENT_TOML)
    agent = AgentProcess(config, root / "states" / bundle.name)
    agent.start()
    return agent


def test_a_deploy_through_one_replica_reaches_the_devices_on_every_node(
    replicas: ReplicaSet, models: Models, devices: dict[str, AgentProcess]
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
    for agent in devices.values():
        agent.wait_for_version("clf", version, timeout=WAIT_S)
        assert agent.infer("clf", models.rows)[0] == 200
