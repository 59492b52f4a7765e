"""The embedded amqtt broker: the fleet's passwords and ACL, and the MQTT features we rely on.

Real paho-mqtt clients (MQTT 3.1.1, all amqtt speaks) against a real EmbeddedBroker running on an
event loop in a background thread. Waits have deadlines; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from edge_protocol.topics import Topics
from model_registry.mqtt.acl import is_allowed
from model_registry.mqtt.credentials import generate_password, hash_password
from model_registry.mqtt.embedded import EmbeddedBroker, EmbeddedBrokerError
from tests.registry.embedded.broker_thread import (
    DEADLINE,
    NOT_AUTHORIZED,
    REGISTRY,
    SHA,
    SUBSCRIBE_REFUSED,
    TOPICS,
    BrokerThread,
    P,
    codes,
    drain_retained,
    drain_until,
)
from tests.support.broker import LOCALHOST, ConnectRefusedError

# --- the access rules, as evaluated for the embedded broker --------------------------------

DEV, OTHER = "dev-a", "dev-b"


@pytest.mark.parametrize(
    ("username", "topic", "action", "allowed"),
    [
        # The registry: everything under the prefix, nothing outside.
        (REGISTRY, f"{P}/#", "subscribe", True),
        (REGISTRY, P, "write", True),
        (REGISTRY, TOPICS.assignment(DEV), "write", True),
        (REGISTRY, TOPICS.state(DEV), "read", True),
        (REGISTRY, "other/topic", "write", False),
        (REGISTRY, "#", "subscribe", False),
        # A device reads the shared documents, with or without wildcards.
        (DEV, TOPICS.root(1), "read", True),
        (DEV, TOPICS.all_roots(), "subscribe", True),
        (DEV, f"{P}/trust/#", "subscribe", True),
        (DEV, TOPICS.model_releases("iris"), "subscribe", True),
        (DEV, f"{P}/releases/+/+", "subscribe", True),
        (DEV, f"{P}/artifacts/{SHA}/+", "subscribe", True),
        (DEV, TOPICS.artifact_chunk(SHA, 7), "read", True),
        # ... and its own assignment, but nobody else's, and no filter that could match one.
        (DEV, TOPICS.assignment(DEV), "subscribe", True),
        (DEV, TOPICS.assignment(OTHER), "subscribe", False),
        (DEV, TOPICS.assignment(OTHER), "read", False),
        (DEV, f"{P}/devices/+/assignment", "subscribe", False),
        (DEV, f"{P}/devices/{DEV}/#", "subscribe", False),
        (DEV, f"{P}/#", "subscribe", False),
        (DEV, "#", "subscribe", False),
        # ... and its own acks, written by the registry alone.
        (DEV, TOPICS.acks(DEV), "subscribe", True),
        (DEV, TOPICS.acks(OTHER), "subscribe", False),
        (DEV, TOPICS.acks(OTHER), "read", False),
        (DEV, f"{P}/devices/+/acks", "subscribe", False),
        (DEV, TOPICS.acks(DEV), "write", False),
        (REGISTRY, TOPICS.acks(DEV), "write", True),
        (None, TOPICS.acks(DEV), "read", False),
        # It writes its own reports only, and reads none of them.
        (DEV, TOPICS.state(DEV), "write", True),
        (DEV, TOPICS.events(DEV), "write", True),
        (DEV, TOPICS.telemetry(DEV), "write", True),
        (DEV, TOPICS.state(DEV), "read", False),
        (DEV, TOPICS.state(OTHER), "write", False),
        (DEV, TOPICS.telemetry(OTHER), "write", False),
        (DEV, TOPICS.assignment(DEV), "write", False),
        (DEV, TOPICS.release("iris", 1), "write", False),
        (DEV, TOPICS.artifact_chunk(SHA, 0), "write", False),
        (DEV, TOPICS.root(2), "write", False),
        # Anonymous clients (only where allowed) read the shared documents, as in mosquitto.
        (None, TOPICS.root(1), "read", True),
        (None, TOPICS.assignment(DEV), "read", False),
        (None, TOPICS.state(DEV), "write", False),
        # Usernames that are not valid device ids get nothing (mosquitto: "dangerous").
        ("dev+a", TOPICS.root(1), "read", False),
        ("a/b", TOPICS.root(1), "read", False),
        ("dev-a\n", TOPICS.root(1), "read", False),
        # Malformed topics and filters are refused whoever asks.
        (REGISTRY, f"{P}/x/+", "write", False),
        (REGISTRY, f"{P}/#/x", "subscribe", False),
        (REGISTRY, f"{P}/a+", "subscribe", False),
        (REGISTRY, "", "read", False),
    ],
)
def test_is_allowed_implements_the_protocol_acl(
    username: str | None, topic: str, action: Any, allowed: bool
) -> None:
    assert is_allowed(TOPICS, REGISTRY, username, topic, action) is allowed


def test_is_allowed_follows_the_prefix() -> None:
    topics = Topics("fleet/eu")
    assert is_allowed(topics, REGISTRY, "d1", topics.assignment("d1"), "read")
    assert not is_allowed(topics, REGISTRY, "d1", TOPICS.assignment("d1"), "read")


# --- authentication -------------------------------------------------------------------------


def test_devices_and_the_registry_connect_with_their_credentials(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    device = embedded.add_user()
    with embedded.connect(device), embedded.connect(registry):
        pass


@pytest.mark.parametrize("who", ["anonymous", "wrong-password", "unknown-user", "no-password"])
def test_bad_credentials_are_refused(embedded: BrokerThread, who: str) -> None:
    name, password = embedded.add_user()
    user: tuple[str, str] | None = {
        "anonymous": None,
        "wrong-password": (name, password + "x"),
        "unknown-user": ("intruder", password),
        "no-password": (name, ""),
    }[who]
    with pytest.raises(ConnectRefusedError) as refused:
        embedded.connect(user)
    assert refused.value.reason_code.value == NOT_AUTHORIZED


def test_in_process_registry_password_and_sync_lookup() -> None:
    in_process, device_password = generate_password(), generate_password()
    hashes = {"dev-1": hash_password(device_password)}
    broker = BrokerThread(registry_password=in_process, password_lookup=hashes.get).start()
    try:
        with broker.connect((REGISTRY, in_process)), broker.connect(("dev-1", device_password)):
            pass
        with pytest.raises(ConnectRefusedError):
            broker.connect((REGISTRY, "guess"))
    finally:
        broker.stop()


def test_anonymous_clients_when_allowed_read_only_shared_documents() -> None:
    broker = BrokerThread(allow_anonymous=True).start()
    try:
        with broker.connect(None) as anonymous:
            assert codes(anonymous.subscribe(TOPICS.all_roots())) == [1]
            assert codes(anonymous.subscribe(TOPICS.assignment(DEV))) == [SUBSCRIBE_REFUSED]
    finally:
        broker.stop()


def test_a_taken_port_is_a_clear_error(
    embedded: BrokerThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    clash = EmbeddedBroker(
        LOCALHOST,
        embedded.port,
        topics=TOPICS,
        registry_user=REGISTRY,
        password_lookup=lambda _name: None,
    )
    with pytest.raises(EmbeddedBrokerError, match="cannot start") as raised:
        asyncio.run(clash.start())
    assert "already in use" in str(raised.value)
    # The one-line error is the whole report: amqtt's own traceback of the failure is dropped.
    tracebacks = [r for r in caplog.records if r.exc_info and r.levelno >= logging.INFO]
    assert tracebacks == [], [r.getMessage() for r in tracebacks]


# --- the access rules, enforced ---------------------------------------------------------------


def test_a_device_reads_its_own_assignment_and_not_another_devices(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    device, other = embedded.add_user(), embedded.add_user()
    with embedded.connect(registry) as reg:
        reg.publish(TOPICS.assignment(device[0]), b"mine", retain=True)
        reg.publish(TOPICS.assignment(other[0]), b"theirs", retain=True)
    with embedded.connect(device) as dev:
        refused = [TOPICS.assignment(other[0]), f"{P}/devices/+/assignment", f"{P}/#", "#"]
        for topic_filter in refused:
            assert codes(dev.subscribe(topic_filter)) == [SUBSCRIBE_REFUSED], topic_filter
        assert codes(dev.subscribe(TOPICS.assignment(device[0]))) == [1]
        message = dev.next_message(DEADLINE)
        assert (message.topic, message.payload, message.retain) == (
            TOPICS.assignment(device[0]),
            b"mine",
            True,
        )
        barrier = TOPICS.assignment(device[0])
        with embedded.connect(registry) as reg:
            reg.publish(barrier, b"barrier")
        assert [m.topic for m in drain_until(dev, barrier)] == []


def test_a_device_reads_its_own_acks_and_not_another_devices(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    device, other = embedded.add_user(), embedded.add_user()
    with embedded.connect(device) as dev:
        for topic_filter in (TOPICS.acks(other[0]), f"{P}/devices/+/acks"):
            assert codes(dev.subscribe(topic_filter)) == [SUBSCRIBE_REFUSED], topic_filter
        assert codes(dev.subscribe(TOPICS.acks(device[0]))) == [1]
        with embedded.connect(registry) as reg:
            reg.publish(TOPICS.acks(other[0]), b"theirs")
            reg.publish(TOPICS.acks(device[0]), b"mine")
        message = dev.next_message(DEADLINE)
        assert (message.topic, message.payload) == (TOPICS.acks(device[0]), b"mine")


def test_a_device_writes_only_its_own_reports(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    device, other = embedded.add_user(), embedded.add_user()
    forbidden = [
        TOPICS.state(other[0]),
        TOPICS.events(other[0]),
        TOPICS.telemetry(other[0]),
        TOPICS.assignment(device[0]),
        TOPICS.acks(device[0]),
        TOPICS.acks(other[0]),
        TOPICS.release("iris", 1),
        TOPICS.artifact_chunk(SHA, 0),
        TOPICS.root(1),
    ]
    allowed = [TOPICS.events(device[0]), TOPICS.telemetry(device[0])]
    with embedded.connect(registry) as reg, embedded.connect(device) as dev:
        assert codes(reg.subscribe(f"{P}/#")) == [1]
        drain_retained(reg)
        for topic in forbidden + allowed:
            dev.publish(topic, b"from-device")  # MQTT 3.1.1 acknowledges even refused ones
        barrier = TOPICS.state(device[0])
        dev.publish(barrier, b"barrier")
        received = [m.topic for m in drain_until(reg, barrier)]
    assert received == allowed


def test_the_registry_publishes_retained_everywhere_under_the_prefix(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    device = embedded.add_user()
    topics = [
        TOPICS.root(1),
        TOPICS.release("iris", 1),
        TOPICS.artifact_chunk(SHA, 0),
        TOPICS.assignment(device[0]),
        TOPICS.state(device[0]),
    ]
    with embedded.connect(registry) as reg:
        for topic in topics:
            reg.publish(topic, topic.encode(), retain=True)
    with embedded.connect(registry) as reader:
        for topic in topics:
            assert codes(reader.subscribe(topic)) == [1]
            message = reader.next_message(DEADLINE)
            assert (message.topic, message.payload, message.retain) == (topic, topic.encode(), True)
