"""mosquitto run from exactly the files `model-registry broker-config --tls` writes.

The registry's home is made by `model-registry init`, two devices are provisioned by the
registry's own service (`add_device`, what `devices add` calls), the broker files come from the
CLI in a subprocess, and mosquitto runs them unchanged. Clients speak MQTT 3.1.1, whose PUBACK
cannot say "not authorised": a forbidden publish is acknowledged and dropped, so every check
uses an allowed message sent afterwards as an ordering marker instead of a sleep.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path

import pytest

from model_registry.services.devices import BUNDLE_PASSWORD
from tests.e2e.production_broker import (
    DEVICE,
    NEW,
    OTHER,
    REGISTRY,
    SHA,
    TOPICS,
    V311,
    Production,
    marker,
)
from tests.support.broker import (
    LOCALHOST,
    ConnectRefusedError,
    MqttTestClient,
)
from tests.support.registry import RegistryProcess, cli

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
    barrier = marker("trust")
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
        barrier = marker("releases")
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
