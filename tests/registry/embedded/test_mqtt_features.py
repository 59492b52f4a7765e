"""What the protocol relies on, on the embedded broker: retained chunks, QoS 1, wills, sessions."""

from __future__ import annotations

import os
import socket
import uuid

import pytest

from model_registry.mqtt.credentials import generate_password
from tests.registry.embedded.broker_thread import (
    DEADLINE,
    REGISTRY,
    TOPICS,
    BrokerThread,
    P,
    SessionAwareClient,
    codes,
    connect_by_hand,
    drain_until,
    drop,
    wait_until,
)
from tests.support.broker import LOCALHOST, ConnectRefusedError, MqttTestClient

# --- MQTT features the protocol relies on --------------------------------------------------


def test_binary_retained_chunk_is_kept_and_an_empty_retained_publish_clears_it(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    device = embedded.add_user()
    chunk = os.urandom(256 * 1024)
    topic = TOPICS.artifact_chunk(uuid.uuid4().hex * 2, 0)
    with embedded.connect(registry) as reg:
        reg.publish(topic, chunk, retain=True)
    with embedded.connect(device) as dev:
        assert codes(dev.subscribe(topic)) == [1]
        message = dev.next_message(DEADLINE)
    assert (message.payload == chunk, message.retain, message.qos) == (True, True, 1)

    with embedded.connect(registry) as reg:
        reg.publish(topic, b"", retain=True)
        barrier = topic.rsplit("/", 1)[0] + "/1"
        with embedded.connect(device) as dev:
            assert codes(dev.subscribe(topic.rsplit("/", 1)[0] + "/+")) == [1]
            reg.publish(barrier, b"barrier")
            assert drain_until(dev, barrier) == []


def test_qos1_messages_arrive_at_qos1_in_order(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    device = embedded.add_user()
    with embedded.connect(registry) as reg, embedded.connect(device) as dev:
        assert codes(reg.subscribe(TOPICS.events(device[0]))) == [1]
        for n in range(20):
            assert not dev.publish(TOPICS.events(device[0]), str(n).encode()).is_failure
        received = [reg.next_message(DEADLINE) for _ in range(20)]
    assert [(m.payload, m.qos) for m in received] == [(str(n).encode(), 1) for n in range(20)]


def test_one_mebibyte_message_passes(embedded: BrokerThread, registry: tuple[str, str]) -> None:
    payload = os.urandom(1024 * 1024)
    topic = TOPICS.artifact_chunk(uuid.uuid4().hex * 2, 0)
    with embedded.connect(registry) as sender, embedded.connect(registry) as receiver:
        assert codes(receiver.subscribe(topic)) == [1]
        sender.publish(topic, payload)
        assert receiver.next_message(DEADLINE).payload == payload


def test_two_hundred_retained_chunks_arrive_on_one_wildcard_subscribe(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    device = embedded.add_user()
    sha = uuid.uuid4().hex * 2
    chunks = {TOPICS.artifact_chunk(sha, i): os.urandom(4096) for i in range(200)}
    with embedded.connect(registry) as reg:
        for topic, data in chunks.items():
            reg.publish(topic, data, retain=True)
    with embedded.connect(device) as dev:
        assert codes(dev.subscribe(f"{P}/artifacts/{sha}/+")) == [1]
        received: dict[str, bytes | bytearray] = {}
        while len(received) < len(chunks):
            message = dev.next_message(DEADLINE)
            received[message.topic] = message.payload
    assert received == chunks


def test_the_will_is_published_retained_when_a_device_vanishes(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    device = embedded.add_user()
    state = TOPICS.state(device[0])
    with embedded.connect(registry) as reg:
        assert codes(reg.subscribe(state)) == [1]
        dev = embedded.paho(device, client_id=device[0], will=(state, b"offline"))
        connect_by_hand(dev, embedded.port)
        drop(dev)  # no DISCONNECT: the broker must publish the will
        message = reg.next_message(DEADLINE)
    assert (message.topic, message.payload) == (state, b"offline")
    with embedded.connect(registry) as later:
        later.subscribe(state)
        assert later.next_message(DEADLINE).payload == b"offline"


def test_the_will_is_published_when_a_device_stops_talking(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    device = embedded.add_user()
    state = TOPICS.state(device[0])
    silent = embedded.paho(device, client_id=device[0], will=(state, b"offline"))
    with embedded.connect(registry) as reg:
        assert codes(reg.subscribe(state)) == [1]
        # Keep-alive 1 s, then never call loop() again: no PINGREQ, the socket stays open,
        # like a device that lost power. The broker must give up after 1.5 keep-alives.
        connect_by_hand(silent, embedded.port, keepalive=1)
        message = reg.next_message(DEADLINE)
    drop(silent)
    assert (message.topic, message.payload) == (state, b"offline")


def test_a_will_on_a_forbidden_topic_is_dropped(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    device, victim = embedded.add_user(), embedded.add_user()
    target = TOPICS.assignment(victim[0])
    with embedded.connect(registry) as reg:
        assert codes(reg.subscribe(target)) == [1]
        dev = embedded.paho(device, will=(target, b"evil"))
        connect_by_hand(dev, embedded.port)  # accepted, as by mosquitto
        drop(dev)
        barrier = TOPICS.state(victim[0])
        reg.subscribe(barrier)
        with embedded.connect(victim) as vic:
            vic.publish(barrier, b"barrier")
        assert drain_until(reg, barrier) == []


def test_a_persistent_session_gets_what_was_queued_while_offline(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    device = embedded.add_user()
    assignment = TOPICS.assignment(device[0])
    with embedded.connect(device, client_id=device[0], clean_session=False) as dev:
        assert codes(dev.subscribe(assignment)) == [1]
    with embedded.connect(registry) as reg:
        for n in range(3):
            reg.publish(assignment, f"seq-{n}".encode())
    client = embedded.paho(device, client_id=device[0], clean_session=False)
    with SessionAwareClient.connect(client, LOCALHOST, embedded.port, timeout=DEADLINE) as dev:
        received = [dev.next_message(DEADLINE) for _ in range(3)]
    assert dev.session_present is True
    assert [(m.payload, m.qos, m.retain) for m in received] == [
        (f"seq-{n}".encode(), 1, False) for n in range(3)
    ]


def test_an_unacknowledged_message_is_sent_again_after_a_reconnect(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    device = embedded.add_user()
    assignment = TOPICS.assignment(device[0])
    forgetful = embedded.paho(device, client_id=device[0], clean_session=False)
    forgetful.manual_ack_set(True)  # receives, never sends the PUBACK
    with MqttTestClient.connect(forgetful, LOCALHOST, embedded.port, timeout=DEADLINE) as dev:
        assert codes(dev.subscribe(assignment)) == [1]
        with embedded.connect(registry) as reg:
            reg.publish(assignment, b"unacked")
        assert dev.next_message(DEADLINE).payload == b"unacked"
    with embedded.connect(device, client_id=device[0], clean_session=False) as dev:
        message = dev.next_message(DEADLINE)
    assert (message.payload, message.qos, message.dup) == (b"unacked", 1, True)


def test_a_reconnecting_device_takes_over_its_session(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    device = embedded.add_user()
    assignment = TOPICS.assignment(device[0])
    old = embedded.connect(device, client_id=device[0], clean_session=False)
    assert codes(old.subscribe(assignment)) == [1]
    # The old TCP connection is still open (half-open after a network change, say).
    with embedded.connect(device, client_id=device[0], clean_session=False) as new:
        wait_until(lambda: not old.paho.is_connected(), "the old connection's end")
        old.paho.loop_stop()  # before paho reconnects it and takes the session back
        with embedded.connect(registry) as reg:
            reg.publish(assignment, b"after-takeover")
        message = new.next_message(DEADLINE)
    assert (message.payload, message.retain) == (b"after-takeover", False)


def test_a_failed_login_does_not_disturb_the_device_it_names(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    device = embedded.add_user()
    assignment = TOPICS.assignment(device[0])
    with embedded.connect(device, client_id=device[0], clean_session=False) as dev:
        assert codes(dev.subscribe(assignment)) == [1]
        with pytest.raises(ConnectRefusedError):
            embedded.connect((device[0], "wrong"), client_id=device[0])
        with embedded.connect(registry) as reg:
            reg.publish(assignment, b"still-here")
        assert dev.next_message(DEADLINE).payload == b"still-here"


def test_connecting_does_not_replay_retained_messages_of_other_clients_filters(
    embedded: BrokerThread, registry: tuple[str, str]
) -> None:
    device, other = embedded.add_user(), embedded.add_user()
    with embedded.connect(registry) as reg:
        reg.publish(TOPICS.assignment(other[0]), b"theirs", retain=True)
    with embedded.connect(other) as holder:
        holder.subscribe(TOPICS.assignment(other[0]))  # a filter the broker now holds
        holder.next_message(DEADLINE)
        with embedded.connect(device) as dev:
            barrier = TOPICS.assignment(device[0])
            dev.subscribe(barrier)
            with embedded.connect(registry) as reg:
                reg.publish(barrier, b"barrier")
            assert drain_until(dev, barrier) == []


def test_stop_closes_client_connections() -> None:
    password = generate_password()
    broker = BrokerThread(registry_password=password).start()
    client = broker.connect((REGISTRY, password))
    broker.stop()
    wait_until(lambda: not client.paho.is_connected(), "disconnection")
    client.paho.loop_stop()
    with (
        pytest.raises(ConnectionRefusedError),
        socket.create_connection((LOCALHOST, broker.port), timeout=1),
    ):
        pass


def test_subscription_table_iterates_over_a_snapshot() -> None:
    """amqtt awaits while iterating subscriptions; new subscribers must not break that loop."""
    from model_registry.mqtt._amqtt_broker import _SnapshotDict

    table = _SnapshotDict({"a/#": []})
    for key in table:
        table[f"{key}/more"] = []
    for key, _value in table.items():
        table[f"{key}/again"] = []
    assert len(table) == 4
