"""The embedded amqtt broker: the fleet's passwords and ACL, and the MQTT features we rely on.

Real paho-mqtt clients (MQTT 3.1.1, all amqtt speaks) against a real EmbeddedBroker running on an
event loop in a background thread. Waits have deadlines; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_protocol.topics import Topics
from model_registry.mqtt.acl import is_allowed
from model_registry.mqtt.credentials import generate_password, hash_password
from model_registry.mqtt.embedded import EmbeddedBroker, EmbeddedBrokerError
from tests.support.broker import LOCALHOST, ConnectRefusedError, MqttTestClient

TOPICS = Topics()
P = TOPICS.prefix
REGISTRY = "registry"
SHA = "cd" * 32
NOT_AUTHORIZED = 0x87  # paho reports MQTT 3.1.1 CONNACK code 5 as this v5 reason code
SUBSCRIBE_REFUSED = 0x80
DEADLINE = 10.0  # seconds; happy paths take milliseconds


class BrokerThread:
    """An EmbeddedBroker on its own event loop thread, so blocking paho clients can use it."""

    def __init__(self, **options: Any) -> None:
        self.passwords: dict[str, str] = {}  # username -> stored hash
        self.options = options
        self.broker: EmbeddedBroker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> BrokerThread:
        """Start the thread and wait until the broker listens (or raise why it did not)."""
        self._thread.start()
        if not self._ready.wait(DEADLINE):
            raise TimeoutError("the embedded broker did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        """Stop the broker and its loop."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(DEADLINE)

    @property
    def port(self) -> int:
        assert self.broker is not None
        return self.broker.port

    def add_user(self, username: str | None = None) -> tuple[str, str]:
        """Provision a user (a fresh device id by default); return (username, password)."""
        username = username or f"dev-{uuid.uuid4().hex[:10]}"
        password = generate_password()
        self.passwords[username] = hash_password(password)
        return username, password

    def connect(
        self,
        user: tuple[str, str] | None,
        *,
        client_id: str | None = None,
        clean_session: bool = True,
        will: tuple[str, bytes] | None = None,
    ) -> MqttTestClient:
        """Connect an MQTT 3.1.1 client as `user` ((name, password), None: anonymous)."""
        client = self.paho(user, client_id=client_id, clean_session=clean_session, will=will)
        return MqttTestClient.connect(client, LOCALHOST, self.port, timeout=DEADLINE)

    def paho(
        self,
        user: tuple[str, str] | None,
        *,
        client_id: str | None = None,
        clean_session: bool = True,
        will: tuple[str, bytes] | None = None,
    ) -> mqtt.Client:
        """An unconnected paho client with credentials and a retained QoS 1 will.

        `client_id` defaults to a device's own id, as the agent uses, and to a broker-assigned
        one for the registry and anonymous clients.
        """
        if client_id is None:
            client_id = user[0] if user is not None and user[0] != REGISTRY else ""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        if user is not None:
            client.username_pw_set(*user)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        return client

    async def _lookup(self, username: str) -> str | None:
        # A coroutine function, like the registry's (which reads its storage).
        return self.passwords.get(username)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        options = {"password_lookup": self._lookup, **self.options}
        self.broker = EmbeddedBroker(LOCALHOST, 0, topics=TOPICS, registry_user=REGISTRY, **options)
        try:
            await self.broker.start()
        except Exception as e:  # noqa: BLE001 (handed to the thread waiting in start())
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.broker.stop()


@pytest.fixture(scope="module")
def embedded() -> Iterator[BrokerThread]:
    """One embedded broker for the module; tests use fresh device ids so they do not interact."""
    broker = BrokerThread().start()
    yield broker
    broker.stop()


@pytest.fixture
def registry(embedded: BrokerThread) -> tuple[str, str]:
    """The registry's credentials (a fresh password each test: only the hash is stored)."""
    return embedded.add_user(REGISTRY)


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` until it holds, failing after DEADLINE seconds."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {DEADLINE:.0f}s")
        time.sleep(0.02)


def connect_by_hand(client: mqtt.Client, port: int, keepalive: int = 30) -> None:
    """Connect without a network thread: nothing pings or reconnects behind the test's back."""
    client.connect(LOCALHOST, port, keepalive=keepalive)
    wait_until(lambda: client.loop(0.05) == 0 and client.is_connected(), "CONNACK")


def drop(client: mqtt.Client) -> None:
    """Close the client's socket without DISCONNECT, as a crash or a cut cable would."""
    sock = client.socket()
    assert sock is not None
    sock.close()


def codes(reason_codes: list[Any]) -> list[int]:
    return [code.value for code in reason_codes]


def drain_until(client: MqttTestClient, barrier: str) -> list[mqtt.MQTTMessage]:
    """Messages received up to and including the first on `barrier`, which is excluded."""
    return client.collect_until(barrier, DEADLINE)[:-1]


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


class SessionAwareClient(MqttTestClient):
    """A test client that remembers the CONNACK's session-present flag."""

    session_present: bool | None = None

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        self.session_present = flags.session_present
        super()._on_connect(client, userdata, flags, reason_code, properties)


def drain_retained(client: MqttTestClient) -> None:
    """Forget the retained messages a wide subscription replayed (other tests' leftovers)."""
    barrier = f"{P}/barrier/{uuid.uuid4().hex}"
    client.publish(barrier, b"barrier")
    drain_until(client, barrier)


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
