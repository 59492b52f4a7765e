"""A three-node NATS cluster with JetStream and its MQTT listener, on loopback, for tests.

Each node gets a config file written here: its own `server_name`, JetStream store directory
and free ports (client, cluster routes, MQTT, monitoring; a system nats-server may hold 4222).
MQTT needs JetStream: NATS keeps MQTT sessions, retained messages and QoS 1 deliveries in
streams it manages, and `stream_replicas` / `consumer_replicas` 3 put them on every node, so
they survive the loss of one. docs/operations.md section 12 shows the same config.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .broker import LOCALHOST, BrokerStartError, free_port

NATS_SERVER_CANDIDATES = ("/usr/sbin/nats-server", "/usr/bin/nats-server")
INSTALL_HINT = "apt-get install -y nats-server"
CLUSTER_NAME = "edge"
START_TIMEOUT = 90.0  # JetStream meta-leader election on a loaded 2-core machine
MAX_PAYLOAD = 8 * 1024 * 1024  # NATS's own ceiling is 64 MiB; it warns above 8 MiB
REGISTRY_USER = "registry"
PREFIX = "edge.v1"  # the topic prefix edge/v1 as a NATS subject


def find_nats_server() -> Path:
    """The nats-server binary, or a clear error saying how to install it."""
    found = shutil.which("nats-server")
    for candidate in (found, *NATS_SERVER_CANDIDATES):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise BrokerStartError(f"nats-server is not installed ({INSTALL_HINT})")


def permissions(user: str, registry_user: str = REGISTRY_USER) -> dict[str, list[str]]:
    """What `user` may publish and subscribe to, as NATS subjects (`/` becomes `.`).

    The registry may use every subject; a device what the mosquitto ACL gives it
    (model_registry/mqtt/acl.py): read trust, releases, artifacts and its own assignment and
    acks, write its own state, events and telemetry (and take the deliveries of its
    subscriptions, on `$MQTT.sub.>`). Every user has permissions: nats-server
    2.9.10 crashes on a reload of users without any while it holds retained messages.
    """
    if user == registry_user:
        return {"publish": [">"], "subscribe": [">"]}
    own = f"{PREFIX}.devices.{user}"
    return {
        "publish": [f"{own}.state", f"{own}.events", f"{own}.telemetry"],
        "subscribe": [f"{PREFIX}.{part}.>" for part in ("trust", "releases", "artifacts")]
        + [f"{own}.assignment", f"{own}.acks"]
        # Where NATS delivers what the JetStream consumers of MQTT subscriptions hold.
        + ["$MQTT.sub.>"],
    }


def node_config(
    name: str,
    ports: NodePorts,
    routes: list[int],
    store_dir: Path,
    users: Mapping[str, str],
) -> str:
    """One node's config: JetStream, the cluster routes and the MQTT listener.

    `users` are the MQTT logins (user -> password); with none, every client is let in.
    """
    route_urls = ", ".join(f'"nats-route://{LOCALHOST}:{port}"' for port in routes)
    user_lines = "\n".join(
        f"    {{user: {json.dumps(user)}, password: {json.dumps(password)},"
        f" permissions: {json.dumps(permissions(user))}}}"
        for user, password in sorted(users.items())
    )
    auth = f"authorization {{\n  users: [\n{user_lines}\n  ]\n}}\n" if users else ""
    return f"""\
server_name: {name}
listen: {LOCALHOST}:{ports.client}
http: {LOCALHOST}:{ports.monitor}
max_payload: {MAX_PAYLOAD}
jetstream {{
  store_dir: "{store_dir}"
  max_memory_store: 64MB
  max_file_store: 1GB
}}
cluster {{
  name: {CLUSTER_NAME}
  listen: {LOCALHOST}:{ports.cluster}
  routes: [{route_urls}]
}}
mqtt {{
  listen: {LOCALHOST}:{ports.mqtt}
  # Sessions, retained messages and QoS 1 messages on every node: one may be lost.
  stream_replicas: 3
  # One consumer per subscribed topic, on one node and in memory: NATS 2.9 gives the
  # consumer of each topic of a SUBSCRIBE 4 s, and replicated ones (R3, on files or even in
  # memory) took longer than that on a busy 2-core machine, which refuses the subscription.
  # A consumer lost with its node is made again from the session when the client comes back.
  consumer_replicas: 1
  consumer_memory_storage: true
  # A redelivery only after a PUBACK is long overdue: the agent acks each chunk once written.
  ack_wait: "60s"
}}
{auth}"""


@dataclass(frozen=True)
class NodePorts:
    """The four listeners of one node."""

    client: int = field(default_factory=free_port)
    cluster: int = field(default_factory=free_port)
    mqtt: int = field(default_factory=free_port)
    monitor: int = field(default_factory=free_port)


@dataclass
class NatsNode:
    """One nats-server process of the cluster."""

    name: str
    root: Path
    ports: NodePorts = field(default_factory=NodePorts)
    process: subprocess.Popen[bytes] | None = None

    @property
    def config_file(self) -> Path:
        """Where this node's config is written."""
        return self.root / f"{self.name}.conf"

    @property
    def log_file(self) -> Path:
        """Where this node writes its log."""
        return self.root / f"{self.name}.log"

    @property
    def mqtt_url(self) -> str:
        """The URL MQTT clients use to reach this node."""
        return f"mqtt://{LOCALHOST}:{self.ports.mqtt}"

    @property
    def running(self) -> bool:
        """Whether the process is alive."""
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the process (its config must be written)."""
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [str(find_nats_server()), "-c", str(self.config_file)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL: the node is gone at once, without telling its peers or clients."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM and wait; SIGKILL if it does not end."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.kill()

    def reload(self) -> None:
        """SIGHUP: nats-server reads its config again (the MQTT users among what it reloads)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGHUP)

    def monitor(self, endpoint: str) -> dict[str, object]:
        """GET a monitoring endpoint (`jsz`, `healthz`, `varz`...) as JSON."""
        url = f"http://{LOCALHOST}:{self.ports.monitor}/{endpoint}"
        with urllib.request.urlopen(url, timeout=5) as response:
            data: dict[str, object] = json.loads(response.read())
        return data

    def healthy(self) -> bool:
        """Whether the node says JetStream is up and current (`/healthz?js-enabled-only`)."""
        try:
            return self.monitor("healthz").get("status") == "ok"
        except OSError:
            return False

    def log_text(self) -> str:
        """The node's log so far."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


class NatsCluster:
    """Three nodes on loopback, routed to each other, with MQTT on each."""

    def __init__(self, root: Path, size: int = 3) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.nodes = [NatsNode(f"n{n}", root) for n in range(1, size + 1)]
        self.users: dict[str, str] = {}

    def write_configs(self) -> None:
        """Write every node's config from the ports and the current users."""
        for node in self.nodes:
            routes = [other.ports.cluster for other in self.nodes if other is not node]
            store = self.root / f"{node.name}-jetstream"
            text = node_config(node.name, node.ports, routes, store, self.users)
            node.config_file.write_text(text)

    def start(self, attempts: int = 3) -> None:
        """Start every node and wait until each is healthy (JetStream has a meta leader).

        A free port can be taken by someone else before a node binds it: then every node
        starts again on new ports.
        """
        for attempt in range(1, attempts + 1):
            self.write_configs()
            for node in self.nodes:
                node.start()
            try:
                self.wait_until(self._all_healthy, "every node healthy")
                return
            except BrokerStartError:
                lost_port = any("address already in use" in n.log_text() for n in self.nodes)
                self.stop()
                if not lost_port or attempt == attempts:
                    raise
                for node in self.nodes:  # a fresh start: new ports, no JetStream state
                    node.ports = NodePorts()
                    node.log_file.unlink(missing_ok=True)
                    shutil.rmtree(self.root / f"{node.name}-jetstream", ignore_errors=True)

    def _all_healthy(self) -> bool:
        if any(node.process is not None and not node.running for node in self.nodes):
            raise BrokerStartError("a NATS node exited while the cluster started")
        return all(node.healthy() for node in self.nodes)

    def set_users(self, users: Mapping[str, str]) -> None:
        """Replace the MQTT logins and have every running node reload them."""
        self.users = dict(users)
        self.write_configs()
        for node in self.nodes:
            node.reload()

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()

    def mqtt_urls(self, *indexes: int) -> list[str]:
        """The MQTT URLs of the nodes at these positions (0-based), in that order."""
        return [self.nodes[i].mqtt_url for i in indexes]

    def wait_until(self, condition: Callable[[], bool], what: str) -> None:
        """Poll `condition` until it holds; fail with every node's log if it never does."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if condition():
                return
            time.sleep(0.2)
        logs = "\n".join(f"--- {n.name}\n{n.log_text()[-4000:]}" for n in self.nodes)
        raise BrokerStartError(f"NATS cluster: no {what} within {START_TIMEOUT:g} s\n{logs}")
