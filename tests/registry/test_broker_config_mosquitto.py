"""A real mosquitto on the files broker-config writes: who may log in, read, write and retain,
and the same verdicts as `acl.is_allowed`.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from model_registry.mqtt.acl import is_allowed
from tests.registry.generated_broker import (
    DEV,
    NOT_AUTHORIZED,
    OTHER,
    REGISTRY,
    SHA,
    TOPICS,
    V311,
    P,
    provision,
    start,
    write,
)
from tests.support.broker import (
    Broker,
    ConnectRefusedError,
    RetainedMessages,
    free_port,
)


@pytest.fixture(scope="module")
def users() -> dict[str, str]:
    return provision((DEV, OTHER))


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory, users: dict[str, str]) -> Iterator[Broker]:
    """mosquitto on a plain listener, configured only by write_broker_config."""
    port = free_port()
    files = write(tmp_path_factory.mktemp("broker-config"), users, port=port)
    broker = start(files, port, users, tls=False)
    yield broker
    broker.stop()


# --- a real mosquitto on the generated files ---------------------------------------------


def test_devices_connect_with_their_own_credentials_only(mosquitto: Broker) -> None:
    for protocol in (MQTTProtocolVersion.MQTTv311, MQTTProtocolVersion.MQTTv5):
        with mosquitto.connect(DEV, client_id=DEV, protocol=protocol), mosquitto.connect(REGISTRY):
            pass
    for username, password in [(None, None), (DEV, "wrong"), (DEV, mosquitto.password(OTHER))]:
        with pytest.raises(ConnectRefusedError) as refused:
            mosquitto.connect(username, password, client_id=DEV)
        assert refused.value.reason_code.is_failure


def test_a_device_reads_only_its_own_assignment(
    mosquitto: Broker, retained: RetainedMessages
) -> None:
    retained.publish(mosquitto, TOPICS.assignment(DEV), b"mine")
    retained.publish(mosquitto, TOPICS.assignment(OTHER), b"theirs")
    with mosquitto.connect(DEV, client_id=DEV) as device:
        # As on the embedded broker: a filter that could match another device's is refused.
        for wide in (f"{P}/devices/+/assignment", f"{P}/devices/#", f"{P}/#", "#"):
            assert [code.is_failure for code in device.subscribe(wide)] == [True], wide
        assert [code.is_failure for code in device.subscribe(TOPICS.assignment(OTHER))] == [True]
        device.subscribe(TOPICS.assignment(DEV))
        barrier = f"{P}/trust/barrier"
        device.subscribe(barrier)
        with mosquitto.connect(REGISTRY) as registry:
            registry.publish(barrier, b"barrier")
        received = device.collect_until(barrier)
    assert [(m.topic, m.payload) for m in received] == [
        (TOPICS.assignment(DEV), b"mine"),
        (barrier, b"barrier"),
    ]


def test_a_device_reads_only_its_own_acks(mosquitto: Broker) -> None:
    with mosquitto.connect(DEV, client_id=DEV) as device:
        assert [code.is_failure for code in device.subscribe(f"{P}/devices/+/acks")] == [True]
        assert [code.is_failure for code in device.subscribe(TOPICS.acks(OTHER))] == [True]
        device.subscribe(TOPICS.acks(DEV))
        with mosquitto.connect(REGISTRY) as registry:
            registry.publish(TOPICS.acks(OTHER), b"theirs")
            registry.publish(TOPICS.acks(DEV), b"mine")
        received = device.collect_until(TOPICS.acks(DEV))
    assert [(m.topic, m.payload) for m in received] == [(TOPICS.acks(DEV), b"mine")]


@pytest.mark.parametrize(
    "topic",
    [
        TOPICS.state(OTHER),
        TOPICS.events(OTHER),
        TOPICS.telemetry(OTHER),
        TOPICS.assignment(DEV),
        TOPICS.assignment(OTHER),
        TOPICS.acks(DEV),
        TOPICS.acks(OTHER),
        TOPICS.release("iris", 1),
        TOPICS.artifact_chunk(SHA, 0),
        TOPICS.root(1),
        "$CONTROL/dynamic-security/v1",
    ],
)
def test_a_device_cannot_publish_outside_its_own_reports(mosquitto: Broker, topic: str) -> None:
    with mosquitto.connect(DEV, client_id=DEV) as device:
        assert device.publish(topic, b"forged").value == NOT_AUTHORIZED
        assert not device.publish(TOPICS.events(DEV), b"allowed").is_failure


def test_refused_publishes_of_a_mqtt311_device_never_reach_the_registry(mosquitto: Broker) -> None:
    with mosquitto.connect(REGISTRY) as registry:
        registry.subscribe(f"{P}/#", retained=False)
        with mosquitto.connect(DEV, client_id=DEV, protocol=V311) as device:
            device.publish(TOPICS.assignment(OTHER), b"forged")  # acknowledged, then dropped
            device.publish(TOPICS.release("iris", 9), b"forged")
            device.publish(TOPICS.state(DEV), b"barrier")
        received = registry.collect_until(TOPICS.state(DEV))
    assert [m.payload for m in received] == [b"barrier"]


def test_the_registry_publishes_retained_everywhere_under_the_prefix(
    mosquitto: Broker, retained: RetainedMessages
) -> None:
    topics = [TOPICS.root(1), TOPICS.release("iris", 1), TOPICS.artifact_chunk(SHA, 0),
              TOPICS.assignment(DEV), TOPICS.state(DEV), P]  # fmt: skip
    for topic in topics:
        assert not retained.publish(mosquitto, topic, topic.encode()).is_failure
    with mosquitto.connect(REGISTRY) as reader:
        reader.subscribe(f"{P}/#")
        reader.subscribe(P)
        got = {m.topic: m.payload for m in (reader.next_message() for _ in topics)}
    assert got == {topic: topic.encode() for topic in topics}
    with mosquitto.connect(REGISTRY) as registry:
        assert registry.publish("elsewhere/x", b"x").value == NOT_AUTHORIZED


def test_a_will_is_published_only_on_a_topic_the_device_may_write(mosquitto: Broker) -> None:
    with mosquitto.connect(REGISTRY) as registry:
        registry.subscribe(f"{P}/#", retained=False)
        for will_topic in (TOPICS.assignment(OTHER), TOPICS.state(DEV)):
            client = mosquitto.paho_client(DEV, client_id=DEV, protocol=V311)
            client.will_set(will_topic, b"offline", qos=1)
            # By hand, without a network thread that would reconnect after the cut.
            client.connect(mosquitto.host, mosquitto.port)
            while not client.is_connected():
                assert client.loop(1.0) == 0
            sock = client.socket()
            assert sock is not None
            sock.close()  # vanish without DISCONNECT
        received = registry.collect_until(TOPICS.state(DEV))
    assert [(m.topic, m.payload) for m in received] == [(TOPICS.state(DEV), b"offline")]


CROSS_CHECK = [
    TOPICS.root(1), TOPICS.release("iris", 2), TOPICS.artifact_chunk(SHA, 3),
    TOPICS.assignment(DEV), TOPICS.assignment(OTHER), TOPICS.state(DEV), TOPICS.state(OTHER),
    TOPICS.events(DEV), TOPICS.telemetry(OTHER), TOPICS.acks(DEV), TOPICS.acks(OTHER),
    f"{P}/trust/extra/level", f"{P}/unknown", P,
]  # fmt: skip
FILTERS = [
    f"{P}/#", f"{P}/trust/#", f"{P}/trust/root/+", f"{P}/releases/+/+", f"{P}/artifacts/{SHA}/+",
    f"{P}/devices/+/assignment", f"{P}/devices/{DEV}/#", f"{P}/devices/{DEV}/+", "#", "+/v1/#",
    f"{P}/devices/+/acks",
    # Registry replicas share device reports in their group; no other group, nobody else.
    f"$share/model-registry/{P}/devices/+/events", f"$share/other/{P}/devices/+/events",
]  # fmt: skip


@pytest.mark.parametrize("username", [DEV, REGISTRY])
def test_is_allowed_agrees_with_mosquitto(mosquitto: Broker, username: str) -> None:
    """For each topic and filter, mosquitto's verdicts equal is_allowed's."""
    tag = uuid.uuid4().hex.encode()
    with mosquitto.connect(username, client_id=username) as client:
        granted = {f for f in [*CROSS_CHECK, *FILTERS] if not client.subscribe(f)[0].is_failure}
        writable = {topic for topic in CROSS_CHECK if not client.publish(topic, tag).is_failure}
        with mosquitto.connect(REGISTRY) as registry:
            for topic in CROSS_CHECK:
                registry.publish(topic, tag)
            barrier = f"{P}/trust/barrier"
            client.subscribe(barrier)
            registry.publish(barrier, b"barrier")
        readable = {m.topic for m in client.collect_until(barrier) if m.payload == tag}
    for topic in CROSS_CHECK:
        assert (topic in writable) == is_allowed(TOPICS, REGISTRY, username, topic, "write"), topic
        assert (topic in readable) == is_allowed(TOPICS, REGISTRY, username, topic, "read"), topic
    for topic_filter in [*CROSS_CHECK, *FILTERS]:
        verdict = is_allowed(TOPICS, REGISTRY, username, topic_filter, "subscribe")
        assert (topic_filter in granted) == verdict, topic_filter


def test_retained_documents_survive_a_restart(tmp_path: Path) -> None:
    users = provision(())
    port = free_port()
    broker = start(write(tmp_path, users, port=port), port, users, tls=False)
    try:
        with broker.connect(REGISTRY) as registry:
            registry.publish(TOPICS.root(1), b"root-1", retain=True)
        broker.restart()
        with broker.connect(REGISTRY) as registry:
            registry.subscribe(TOPICS.root(1))
            assert registry.next_message().payload == b"root-1"
    finally:
        broker.stop()


def test_tls_listener_serves_the_generated_certificate(tmp_path: Path) -> None:
    users = provision((DEV,))
    port = free_port()
    files = write(tmp_path, users, port=port, tls=True)
    broker = start(files, port, users, tls=True)
    try:
        with broker.connect(DEV, client_id=DEV, protocol=V311) as device:
            sock = device.paho.socket()
            assert isinstance(sock, ssl.SSLSocket)
            assert sock.version() == "TLSv1.3"  # `tls_version tlsv1.2` is a minimum
        with pytest.raises(ssl.SSLCertVerificationError):
            broker.connect(DEV, client_id=DEV, trust_ca=False)  # our CA is not in the system store
        with pytest.raises(ConnectRefusedError):
            broker.connect(None)
    finally:
        broker.stop()


def test_regenerating_with_tls_keeps_the_ca_devices_trust(tmp_path: Path) -> None:
    users = provision((DEV,))
    first = write(tmp_path, users, tls=True)
    assert first.ca_cert is not None
    assert first.server_cert is not None
    ca_before = first.ca_cert.read_bytes()
    server_before = first.server_cert.read_bytes()
    again = write(tmp_path, provision((DEV, "dev-2")), tls=True, overwrite=True)
    assert again.ca_cert is not None
    assert again.server_cert is not None
    assert again.ca_cert.read_bytes() == ca_before, "provisioned devices keep trusting the broker"
    assert again.server_cert.read_bytes() != server_before
