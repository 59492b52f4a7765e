"""mosquitto run from exactly the files `model-registry broker-config --tls` writes.

The registry's home is made by `model-registry init`, two devices are provisioned by the
registry's own service (`add_device`, what `devices add` calls), the broker files come from the
CLI in a subprocess, and mosquitto runs them unchanged. Clients speak MQTT 3.1.1, whose PUBACK
cannot say "not authorised": a forbidden publish is acknowledged and dropped, so every check
uses an allowed message sent afterwards as an ordering marker instead of a sleep.
"""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from edge_protocol import Topics
from model_registry.config import load_config
from model_registry.server import make_context
from model_registry.services.devices import BUNDLE_PASSWORD, add_device
from model_registry.storage import open_storage
from tests.support.broker import (
    LOCALHOST,
    Broker,
    BrokerFactory,
    ConnectRefusedError,
    MqttTestClient,
    free_port,
)
from tests.support.registry import RegistryProcess, cli

V311 = MQTTProtocolVersion.MQTTv311
TOPICS = Topics()
REGISTRY = "registry"
DEVICE, OTHER, NEW = "dev-a", "dev-b", "dev-new"
BIN = Path(sys.executable).parent
SHA = "ab" * 32


@dataclass
class Production:
    """The registry home, the running broker and the provisioned bundles."""

    home: Path
    broker: Broker
    bundles: dict[str, Path]
    broker_dir: Path

    def connect(
        self, username: str | None, host: str = LOCALHOST, client_id: str | None = None
    ) -> MqttTestClient:
        """An MQTT 3.1.1 client over TLS, trusting the generated CA, with its own password.

        A device uses its device id as client id, as the agent does, unless told otherwise.
        """
        if client_id is None:
            client_id = "" if username in (None, REGISTRY) else username
        client = self.broker.paho_client(
            username, client_id=client_id, protocol=V311, reconnect_on_failure=False
        )
        return MqttTestClient.connect(client, host, self.broker.port)


async def _provision(home: Path, device_ids: list[str], bundles: Path) -> dict[str, Path]:
    """What `model-registry devices add` does, through the registry's own service."""
    config = load_config(home)
    storage = open_storage(config.database_location)
    await storage.open()
    written = {}
    try:
        for device_id in device_ids:
            bundle = await add_device(make_context(config, storage), device_id, group="prod")
            directory = bundles / device_id
            directory.mkdir(parents=True)
            for name, content in bundle.files.items():
                (directory / name).write_bytes(content)
                (directory / name).chmod(0o600 if name == BUNDLE_PASSWORD else 0o644)
            written[device_id] = directory
    finally:
        await storage.close()
    return written


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Production]:
    root = tmp_path_factory.mktemp("production")
    home = root / "registry-home"
    cli("init", "--home", str(home))
    bundles = asyncio.run(_provision(home, [DEVICE, OTHER], root / "bundles"))
    factory = BrokerFactory(root / "brokers")
    out, port = factory.new_workdir("broker-config"), free_port()
    cli(
        "broker-config", "--home", str(home), "--out", str(out), "--tls", "--port", str(port),
        "--listen-host", LOCALHOST, "--tls-host", "localhost", "--tls-host", LOCALHOST,
    )  # fmt: skip
    users = {REGISTRY: (home / "secrets" / "mqtt-password").read_text().strip()}
    users |= {d: (b / BUNDLE_PASSWORD).read_text().strip() for d, b in bundles.items()}
    broker = factory.from_config(
        out / "mosquitto.conf", port=port, tls=True, ca_file=out / "ca.crt", users=users
    )
    yield Production(home, broker, bundles, out)
    factory.close()


def _marker(channel: str) -> str:
    """A fresh topic under a shared channel, readable by every device."""
    return f"edge/v1/{channel}/marker-{uuid.uuid4().hex[:12]}"


# --- who may connect ----------------------------------------------------------------------


@pytest.mark.parametrize("host", [LOCALHOST, "localhost"])
def test_a_device_connects_over_tls_with_its_own_credentials(
    production: Production, host: str
) -> None:
    with production.connect(DEVICE, host) as device:
        sock = device.paho.socket()
        tls_version = sock.version() if isinstance(sock, ssl.SSLSocket) else None
        own_state = TOPICS.state(DEVICE)
        with production.connect(REGISTRY) as registry:
            registry.subscribe(own_state)
            ack = device.publish(own_state, b"hello from dev-a")
            received = registry.collect_until(own_state)

    assert tls_version in {"TLSv1.2", "TLSv1.3"}
    assert not ack.is_failure
    assert received[-1].payload == b"hello from dev-a"


def test_anonymous_clients_are_refused(production: Production) -> None:
    with pytest.raises(ConnectRefusedError) as refused:
        production.connect(None)

    # MQTT 3.1.1 CONNACK 5: not authorised.
    assert refused.value.reason_code.value in {0x05, 0x87}


def test_a_device_cannot_log_in_as_another(production: Production) -> None:
    borrowed = production.broker.password(DEVICE)
    client = production.broker.paho_client(OTHER, borrowed, client_id=OTHER, protocol=V311)

    with pytest.raises(ConnectRefusedError):
        MqttTestClient.connect(client, LOCALHOST, production.broker.port)


def test_a_device_cannot_take_over_the_registrys_or_another_devices_session(
    production: Production,
) -> None:
    registry_id = f"model-registry-{REGISTRY}"  # what `serve` connects as
    with (
        production.connect(REGISTRY, client_id=registry_id) as registry,
        production.connect(OTHER) as other,
    ):
        registry.subscribe(TOPICS.events(OTHER))
        other.subscribe(TOPICS.assignment(OTHER))
        for victim in (registry_id, OTHER):
            with pytest.raises(ConnectRefusedError):
                production.connect(DEVICE, client_id=victim)
        # Both are still there: the device's next event reaches the registry, and the
        # registry's next document reaches the device.
        other.publish(TOPICS.events(OTHER), b"meanwhile")
        event = registry.next_message()
        registry.publish(TOPICS.assignment(OTHER), b"still yours")
        document = other.next_message()
        lost = registry.connection_lost.is_set() or other.connection_lost.is_set()
    assert (event.topic, event.payload) == (TOPICS.events(OTHER), b"meanwhile")
    assert (document.topic, document.payload) == (TOPICS.assignment(OTHER), b"still yours")
    assert not lost


def test_the_broker_refuses_clients_that_do_not_trust_its_ca(production: Production) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        production.broker.connect(DEVICE, protocol=V311, trust_ca=False)


def test_the_generated_files_keep_secrets_private(production: Production) -> None:
    modes = {p.name: p.stat().st_mode & 0o777 for p in production.broker_dir.iterdir()}

    assert {modes["ca.key"], modes["server.key"]} == {0o600}
    # The password hashes: mosquitto rewrites the file with its own umask, inside a directory
    # nobody else may enter.
    assert (production.broker_dir / "data" / "dynamic-security.json").is_file()
    assert modes["data"] == 0o700
    conf = (production.broker_dir / "mosquitto.conf").read_text()
    assert "allow_anonymous false" in conf
    assert f"listener {production.broker.port} {LOCALHOST}" in conf


# --- what a device may read ---------------------------------------------------------------


@pytest.mark.parametrize(
    "topic_filter",
    [TOPICS.assignment(OTHER), "edge/v1/devices/+/assignment", "edge/v1/devices/#", "#"],
    ids=["other-device", "any-device", "devices-subtree", "everything"],
)
def test_a_device_cannot_read_another_devices_assignment(
    production: Production, topic_filter: str
) -> None:
    own, other = TOPICS.assignment(DEVICE), TOPICS.assignment(OTHER)
    barrier = _marker("trust")
    with production.connect(REGISTRY) as registry:
        for topic in (other, own, barrier):
            registry.publish(topic, f"signed for {topic}".encode(), retain=True)
    try:
        with production.connect(DEVICE) as device:
            device.subscribe(topic_filter)
            # Retained messages of a subscription arrive before the next SUBACK's ones.
            device.subscribe(barrier)
            received = {message.topic for message in device.collect_until(barrier)}
    finally:
        with production.connect(REGISTRY) as registry:
            for topic in (other, own, barrier):
                registry.publish(topic, b"", retain=True)

    assert other not in received
    assert {t for t in received if t.startswith("edge/v1/devices/")} <= {own}


def test_a_device_reads_the_shared_channels_and_its_own_assignment(
    production: Production,
) -> None:
    topics = [
        TOPICS.root(90),
        TOPICS.release("prodcheck", 1),
        TOPICS.artifact_chunk(SHA, 0),
        TOPICS.assignment(DEVICE),
    ]
    with production.connect(REGISTRY) as registry:
        for topic in topics:
            registry.publish(topic, b"readable", retain=True)
    try:
        with production.connect(DEVICE) as device:
            received = []
            for topic in topics:
                device.subscribe(topic)
                received.append(device.next_message().topic)
    finally:
        with production.connect(REGISTRY) as registry:
            for topic in topics:
                registry.publish(topic, b"", retain=True)

    assert received == topics


# --- what a device may write --------------------------------------------------------------


@pytest.mark.parametrize(
    "forbidden",
    [
        TOPICS.state(OTHER),
        TOPICS.events(OTHER),
        TOPICS.telemetry(OTHER),
        TOPICS.assignment(OTHER),
        TOPICS.assignment(DEVICE),
        TOPICS.release("prodcheck", 7),
        TOPICS.artifact_chunk(SHA, 0),
        TOPICS.root(99),
    ],
    ids=[
        "other-state",
        "other-events",
        "other-telemetry",
        "other-assignment",
        "own-assignment",
        "release",
        "artifact",
        "root",
    ],
)
def test_a_device_cannot_publish_outside_its_own_reports(
    production: Production, forbidden: str
) -> None:
    own_events = TOPICS.events(DEVICE)
    with production.connect(REGISTRY) as registry:
        registry.subscribe(forbidden)
        registry.subscribe(own_events)
        with production.connect(DEVICE) as device:
            device.publish(forbidden, b"forged", retain=True)
            # Allowed, and sent after the forged one: once it arrives, so would have that.
            device.publish(own_events, b"genuine")
            still_connected = device.paho.is_connected()
        received = [(m.topic, m.payload) for m in registry.collect_until(own_events)]
        # Nothing was retained either: a new subscriber finds no forged document.
        barrier = _marker("releases")
        registry.publish(barrier, b"barrier", retain=True)
        with production.connect(REGISTRY) as late:
            late.subscribe(forbidden)
            late.subscribe(barrier)
            retained = [(m.topic, m.payload) for m in late.collect_until(barrier)]
        registry.publish(barrier, b"", retain=True)

    assert received == [(own_events, b"genuine")]
    assert still_connected
    assert retained == [(barrier, b"barrier")]


# --- provisioning while the broker runs ----------------------------------------------------


def test_devices_add_lets_the_device_log_in_on_the_running_broker(
    production: Production, tmp_path: Path
) -> None:
    config = production.home / "registry.toml"
    original = config.read_text()
    url = f"mqtts://localhost:{production.broker.port}"
    ca = production.broker_dir / "ca.crt"
    config.write_text(
        original.replace('url = "embedded"', f'url = "{url}"', 1).replace(
            'ca_file = ""', f'ca_file = "{ca}"', 1
        )
    )
    registry = RegistryProcess(production.home, ())
    registry.start()
    try:
        added = cli("devices", "add", NEW, "--group", "prod", "--out", str(tmp_path / "b"),
                    "--home", str(production.home))  # fmt: skip
        password = (tmp_path / "b" / BUNDLE_PASSWORD).read_text().strip()
        # At once: no broker-config, no reload, no restart.
        client = production.broker.paho_client(
            NEW, password, client_id=NEW, protocol=V311, reconnect_on_failure=False
        )
        with MqttTestClient.connect(client, LOCALHOST, production.broker.port) as device:
            codes = device.subscribe(TOPICS.assignment(NEW))
    finally:
        registry.stop()
        config.write_text(original)
    assert "Broker: broker credentials added on the running broker" in added.stdout
    assert [code.is_failure for code in codes] == [False]
    # The plugin saved the login: the broker keeps it across its own restarts.
    saved = json.loads((production.broker_dir / "data" / "dynamic-security.json").read_text())
    assert NEW in {client["username"] for client in saved["clients"]}


# --- a real agent on the production broker ------------------------------------------------


def _agent_config(production: Production, directory: Path) -> tuple[Path, str, str]:
    """A device.toml for dev-a over mqtts:// with a bearer token; (config, password, token)."""
    bundle = production.bundles[DEVICE]
    token = f"tok-{uuid.uuid4().hex}"
    (directory / "server-token").write_text(token + "\n")
    (directory / "server-token").chmod(0o600)
    config = directory / "device.toml"
    config.write_text(
        f'device_id = "{DEVICE}"\n'
        f'[trust]\nroot_file = "{bundle / "root.json"}"\n'
        f"[mqtt]\n"
        f'url = "mqtts://localhost:{production.broker.port}"\n'
        f'password_file = "{bundle / BUNDLE_PASSWORD}"\n'
        f'ca_file = "{production.broker_dir / "ca.crt"}"\n'
        f'[server]\ntoken_file = "server-token"\n'
    )
    return config, (bundle / BUNDLE_PASSWORD).read_text().strip(), token


def _get(url: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - local http
    try:
        with urllib.request.urlopen(request, timeout=5) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0


def test_an_agent_runs_on_the_production_broker_and_logs_no_secret(
    production: Production, tmp_path: Path
) -> None:
    config, password, token = _agent_config(production, tmp_path)
    port = free_port()
    url = f"http://{LOCALHOST}:{port}"
    argv = [str(BIN / "edge-agent"), "run", "--config", str(config), "--log-level", "DEBUG"]
    argv += ["--listen", f"{LOCALHOST}:{port}", "--state-dir", str(tmp_path / "state")]
    log = tmp_path / "agent.log"
    with production.connect(REGISTRY) as registry:
        registry.subscribe(TOPICS.state(DEVICE))
        with log.open("wb") as output:
            agent = subprocess.Popen(argv, stdout=output, stderr=subprocess.STDOUT)
        try:
            online = _wait_online(registry, agent, log)
            statuses = [
                _get(f"{url}/v1/status", token),
                _get(f"{url}/v1/status", "wrong-" + token),
                _get(f"{url}/v1/status"),
            ]
            agent.send_signal(signal.SIGTERM)
            code = agent.wait(timeout=60)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    text = log.read_text()

    assert online["device_id"] == DEVICE
    assert statuses == [200, 401, 401]
    assert code == 0, text
    assert f"connected to localhost:{production.broker.port}" in text
    for secret in (password, token, "wrong-" + token):
        assert secret not in text, "a secret appears in the agent's log"
    # Nor any prefix long enough to matter (a truncated secret is still a leak).
    assert password[:12] not in text
    assert token[:12] not in text


def _wait_online(
    registry: MqttTestClient, agent: subprocess.Popen[bytes], log: Path
) -> dict[str, object]:
    """The agent's first online state message, as the registry sees it."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if agent.poll() is not None:
            raise AssertionError(f"edge-agent exited {agent.returncode}:\n{log.read_text()}")
        try:
            message = registry.next_message(timeout=1)
        except AssertionError:
            continue
        try:
            state = json.loads(message.payload)
        except ValueError:
            continue  # an earlier test's report on the same topic
        if isinstance(state, dict) and state.get("online"):
            return dict(state)
    raise AssertionError(f"the agent never came online:\n{log.read_text()}")
