"""The embedded broker attacked by clients with valid passwords: session takeovers and floods.

As on mosquitto (tests/registry/test_broker_security.py): a device logs in only with its own
device id as client id, so it cannot disconnect the registry or another device; a packet over
`MAX_PACKET_BYTES` disconnects its sender before it is read and nothing of it is kept, while a
full-size chunk still goes through; events and telemetry are never retained.
"""

from __future__ import annotations

import os
import uuid

import pytest

from model_registry.mqtt.limits import MAX_PACKET_BYTES, MAX_PAYLOAD_BYTES
from tests.registry.embedded.broker_thread import (
    DEADLINE,
    NOT_AUTHORIZED,
    REGISTRY,
    TOPICS,
    BrokerThread,
    P,
    codes,
    drain_until,
)
from tests.support.broker import ConnectRefusedError

REGISTRY_CLIENT_ID = f"model-registry-{REGISTRY}"  # what `serve` connects as


def _refused(embedded: BrokerThread, user: tuple[str, str] | None, client_id: str) -> int:
    with pytest.raises(ConnectRefusedError) as refused:
        embedded.connect(user, client_id=client_id)
    return int(refused.value.reason_code.value)


def _nothing_retained(embedded: BrokerThread, registry: tuple[str, str], topic: str) -> bool:
    """Whether a new subscriber to `topic` finds no retained message (a barrier proves it)."""
    barrier = f"{P}/trust/barrier-{uuid.uuid4().hex[:8]}"
    with embedded.connect(registry) as reader:
        assert codes(reader.subscribe(topic)) == [1]
        assert codes(reader.subscribe(barrier)) == [1]
        reader.publish(barrier, b"barrier")
        return drain_until(reader, barrier) == []


# --- client ids are bound to usernames --------------------------------------------------------


def test_a_device_cannot_take_over_the_registrys_session(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    attacker, other = embedded.add_user(), embedded.add_user()
    with embedded.connect(registry, client_id=REGISTRY_CLIENT_ID, clean_session=False) as reg:
        assert codes(reg.subscribe(f"{P}/devices/+/events")) == [1]
        assert _refused(embedded, attacker, REGISTRY_CLIENT_ID) == NOT_AUTHORIZED
        # The event a device sends right after the attempt reaches the registry.
        with embedded.connect(other) as dev:
            dev.publish(TOPICS.events(other[0]), b"meanwhile")
        message = reg.next_message(DEADLINE)
        still_connected = reg.paho.is_connected() and not reg.connection_lost.is_set()
    assert (message.topic, message.payload) == (TOPICS.events(other[0]), b"meanwhile")
    assert still_connected


def test_a_device_cannot_take_over_another_devices_session(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    attacker, victim = embedded.add_user(), embedded.add_user()
    assignment = TOPICS.assignment(victim[0])
    with embedded.connect(victim, clean_session=False) as dev:
        assert codes(dev.subscribe(assignment)) == [1]
        assert _refused(embedded, attacker, victim[0]) == NOT_AUTHORIZED
        with embedded.connect(registry) as reg:
            reg.publish(assignment, b"still yours")
        message = dev.next_message(DEADLINE)
        still_connected = not dev.connection_lost.is_set()
    assert (message.topic, message.payload) == (assignment, b"still yours")
    assert still_connected


@pytest.mark.parametrize("client_id", ["", "{id}-2", "{ID}", "amqtt/abc", REGISTRY_CLIENT_ID])
def test_a_device_logs_in_only_with_its_own_device_id(
    embedded: BrokerThread, client_id: str
) -> None:
    device = embedded.add_user()
    wrong = client_id.format(id=device[0], ID=device[0].upper())
    assert _refused(embedded, device, wrong) == NOT_AUTHORIZED
    with embedded.connect(device, client_id=device[0]):
        pass


def test_anonymous_clients_cannot_borrow_a_devices_id() -> None:
    broker = BrokerThread(allow_anonymous=True).start()
    try:
        device = broker.add_user()
        with broker.connect(device) as dev:
            for borrowed in (device[0], REGISTRY_CLIENT_ID):
                assert _refused(broker, None, borrowed) == NOT_AUTHORIZED
            with broker.connect(None, client_id=""):
                pass
            still_connected = not dev.connection_lost.is_set()
    finally:
        broker.stop()
    assert still_connected


# --- packet size limit and retained state -------------------------------------------------------


def test_a_full_size_chunk_goes_through_and_is_retained(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    device = embedded.add_user()
    chunk = os.urandom(MAX_PAYLOAD_BYTES)
    topic = TOPICS.artifact_chunk(uuid.uuid4().hex * 2, 0)
    with embedded.connect(registry) as reg:
        assert not reg.publish(topic, chunk, retain=True).is_failure
    try:
        with embedded.connect(device) as dev:
            assert codes(dev.subscribe(topic)) == [1]
            message = dev.next_message(60)
    finally:
        with embedded.connect(registry) as reg:
            reg.publish(topic, b"", retain=True)
    assert (message.payload == chunk, message.retain) == (True, True)


@pytest.mark.parametrize("size", [MAX_PACKET_BYTES + 1, 100 * 1024 * 1024])
def test_a_packet_over_the_limit_disconnects_its_sender(
    embedded: BrokerThread, registry: tuple[str, str], size: int
) -> None:
    device = embedded.add_user()
    state = TOPICS.state(device[0])
    with embedded.connect(registry) as reg:
        assert codes(reg.subscribe(state)) == [1]
        dev = embedded.connect(device)
        dev.paho.publish(state, b"x" * size, qos=1, retain=True)
        disconnected = dev.connection_lost.wait(DEADLINE)
        dev.close()
        with embedded.connect(device) as again:
            again.publish(state, b"barrier", retain=True)
        received = [m.payload for m in reg.collect_until(state, DEADLINE)]
        registry_connected = not reg.connection_lost.is_set()
    assert disconnected
    assert received == [b"barrier"]
    assert registry_connected
    with embedded.connect(registry) as reg:
        assert codes(reg.subscribe(state)) == [1]
        assert reg.next_message(DEADLINE).payload == b"barrier"  # retained: the big one is not


def test_a_device_cannot_keep_retained_events_or_telemetry(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    device = embedded.add_user()
    reports = (TOPICS.events(device[0]), TOPICS.telemetry(device[0]))
    with embedded.connect(registry) as reg:
        for topic in reports:
            assert codes(reg.subscribe(topic)) == [1]
        with embedded.connect(device) as dev:
            for topic in reports:
                dev.publish(topic, b"parked", retain=True)
            dev.publish(TOPICS.state(device[0]), b"online", retain=True)
        live = [(m.topic, m.payload) for m in (reg.next_message(DEADLINE) for _ in reports)]
    assert live == [(topic, b"parked") for topic in reports]  # delivered, just not kept
    for topic in reports:
        assert _nothing_retained(embedded, registry, topic)
    with embedded.connect(registry) as reader:
        assert codes(reader.subscribe(TOPICS.state(device[0]))) == [1]
        assert reader.next_message(DEADLINE).payload == b"online"


def test_the_registry_clears_what_it_retained(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    topic = TOPICS.release("iris", int(uuid.uuid4().int % 10_000))
    with embedded.connect(registry) as reg:
        reg.publish(topic, b"signed", retain=True)
        reg.publish(topic, b"", retain=True)
    assert _nothing_retained(embedded, registry, topic)


def test_messages_acknowledged_before_a_disconnect_are_all_delivered(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    sha = uuid.uuid4().hex * 2
    chunks = {TOPICS.artifact_chunk(sha, i): os.urandom(1024) for i in range(300)}
    watchers = [embedded.connect(registry) for _ in range(10)]  # slow down every broadcast
    try:
        for watcher in watchers:
            assert codes(watcher.subscribe(f"{P}/artifacts/{sha}/+")) == [1]
        with embedded.connect(registry) as reg:
            for topic, data in chunks.items():
                reg.publish(topic, data, retain=True)
        # The publisher left at once; every message it got a PUBACK for is the broker's now.
        with embedded.connect(registry) as reader:
            assert codes(reader.subscribe(f"{P}/artifacts/{sha}/+")) == [1]
            received: dict[str, bytes] = {}
            while len(received) < len(chunks):  # some may come live as well as retained
                message = reader.next_message(DEADLINE)
                received[message.topic] = bytes(message.payload)
    finally:
        for watcher in watchers:
            watcher.close()
    assert received == chunks
