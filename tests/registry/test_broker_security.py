"""mosquitto on the files `write_broker_config` writes, attacked by clients with valid passwords.

A device may log in, but only as itself: with the registry's client id or another device's it
is refused and the client it aimed at stays connected, losing nothing. The running registry adds
and removes device logins through the dynamic-security plugin, without a reload. Payloads over
a full artifact chunk are dropped and packets over the limit disconnect their sender; nothing
of either is retained, while a full-size chunk still goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from paho.mqtt.enums import MQTTProtocolVersion

from edge_protocol.topics import Topics
from model_registry.config import load_config
from model_registry.errors import ConflictError, NotFoundError
from model_registry.home import InitResult
from model_registry.mqtt import dynsec
from model_registry.mqtt.acl import REGISTRY_SHARE_GROUP
from model_registry.mqtt.broker_admin import DynsecAdmin
from model_registry.mqtt.client import MqttConnection
from model_registry.mqtt.credentials import generate_password
from model_registry.mqtt.limits import MAX_PACKET_BYTES, MAX_PAYLOAD_BYTES
from model_registry.server import make_context
from model_registry.services.devices import BUNDLE_PASSWORD, add_device, revoke_device
from model_registry.storage import open_storage
from tests.registry.conftest import Api
from tests.registry.generated_broker import provision, start, write
from tests.support.broker import Broker, ConnectRefusedError, MqttTestClient, free_port

TOPICS = Topics()
P = TOPICS.prefix
REGISTRY = "registry"
REGISTRY_CLIENT_ID = f"model-registry-{REGISTRY}"  # what `serve` connects as
DEV, OTHER = "dev-a", "dev-b"
SHA = "9a" * 32
V311 = MQTTProtocolVersion.MQTTv311


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """mosquitto on a plain listener, configured only by write_broker_config."""
    users = provision((DEV, OTHER))
    port = free_port()
    broker = start(write(tmp_path_factory.mktemp("security"), users, port=port), port, users, False)
    yield broker
    broker.stop()


def fresh_broker(tmp_path: Path) -> Broker:
    """A broker of its own, for a test that changes its security settings."""
    users = provision((DEV,))
    port = free_port()
    return start(write(tmp_path, users, port=port), port, users, tls=False)


def _wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.02)


def _barrier(client: MqttTestClient, topic: str) -> list[str]:
    return [m.topic for m in client.collect_until(topic)]


# --- client ids are bound to usernames --------------------------------------------------------


def test_a_device_cannot_take_over_the_registrys_session(mosquitto: Broker) -> None:
    with mosquitto.connect(REGISTRY, client_id=REGISTRY_CLIENT_ID, protocol=V311) as registry:
        registry.subscribe(f"{P}/devices/+/events")
        with pytest.raises(ConnectRefusedError):
            mosquitto.connect(DEV, client_id=REGISTRY_CLIENT_ID, protocol=V311)
        # The event a device sends right after the attempt reaches the registry.
        with mosquitto.connect(OTHER, client_id=OTHER) as other:
            other.publish(TOPICS.events(OTHER), b"meanwhile")
        received = _barrier(registry, TOPICS.events(OTHER))
        assert not registry.connection_lost.is_set()
    assert received == [TOPICS.events(OTHER)]


def test_a_device_cannot_take_over_another_devices_session(mosquitto: Broker) -> None:
    with mosquitto.connect(OTHER, client_id=OTHER, protocol=V311) as victim:
        victim.subscribe(TOPICS.assignment(OTHER))
        for protocol in (V311, MQTTProtocolVersion.MQTTv5):
            with pytest.raises(ConnectRefusedError):
                mosquitto.connect(DEV, client_id=OTHER, protocol=protocol)
        with mosquitto.connect(REGISTRY) as registry:
            registry.publish(TOPICS.assignment(OTHER), b"still yours")
        message = victim.next_message()
        assert not victim.connection_lost.is_set()
    assert (message.topic, message.payload) == (TOPICS.assignment(OTHER), b"still yours")


@pytest.mark.parametrize("client_id", ["", f"{DEV}-2", DEV.upper(), "model-registry-registry"])
def test_a_device_logs_in_only_with_its_own_device_id(mosquitto: Broker, client_id: str) -> None:
    with pytest.raises(ConnectRefusedError):
        mosquitto.connect(DEV, client_id=client_id)
    with mosquitto.connect(DEV, client_id=DEV):
        pass


# --- the running registry adds and removes devices ---------------------------------------------


async def _registry(broker: Broker) -> MqttConnection:
    connection = MqttConnection(
        broker.url, client_id=REGISTRY_CLIENT_ID, username=REGISTRY,
        password=broker.password(REGISTRY), connect_timeout_s=10,
    )  # fmt: skip
    await connection.connect()
    return connection


async def test_a_device_added_to_the_running_broker_logs_in_at_once(mosquitto: Broker) -> None:
    device, password = f"dev-{uuid.uuid4().hex[:8]}", generate_password()
    connection = await _registry(mosquitto)
    try:
        admin = DynsecAdmin(connection, TOPICS)
        with pytest.raises(ConnectRefusedError):
            await asyncio.to_thread(mosquitto.connect, device, password, client_id=device)
        added = await admin.admit(device, password)
        client = await asyncio.to_thread(mosquitto.connect, device, password, client_id=device)
        with client:
            codes = client.subscribe(TOPICS.assignment(device))
            refused = client.subscribe(TOPICS.assignment(DEV))
            sent = client.publish(TOPICS.events(device), b"hello")
            forged = client.publish(TOPICS.events(DEV), b"forged")
            removed = await admin.revoke(device)
            await asyncio.to_thread(client.connection_lost.wait, 10)
            cut_off = client.connection_lost.is_set()
        with pytest.raises(ConnectRefusedError):
            await asyncio.to_thread(mosquitto.connect, device, password, client_id=device)
    finally:
        await connection.close()
    assert (added.status, added.detail) == (
        "added",
        "broker credentials added on the running broker",
    )
    assert [c.is_failure for c in codes + refused] == [False, True]
    assert (sent.is_failure, forged.is_failure) == (False, True)
    assert removed.status == "removed"
    assert cut_off


async def test_provisioning_and_revoking_through_the_service(
    mosquitto: Broker, registry_home: InitResult
) -> None:
    """`add_device` (what POST /v1/devices runs) and `revoke_device` on the running broker."""
    config = load_config(registry_home.home)
    storage = open_storage(config.database_location)
    await storage.open()
    connection = await _registry(mosquitto)
    device = f"dev-{uuid.uuid4().hex[:8]}"
    try:
        ctx = make_context(config, storage)
        ctx.broker_access = DynsecAdmin(connection, TOPICS)
        bundle = await add_device(ctx, device)
        with pytest.raises(ConflictError):  # the device's login on the broker stays as it is
            await add_device(ctx, device)
        password = bundle.files[BUNDLE_PASSWORD].decode()
        client = await asyncio.to_thread(mosquitto.connect, device, password, client_id=device)
        with client:
            revoked = await revoke_device(ctx, device)
            await asyncio.to_thread(client.connection_lost.wait, 10)
            cut_off = client.connection_lost.is_set()
        with pytest.raises(ConnectRefusedError):
            await asyncio.to_thread(mosquitto.connect, device, password, client_id=device)
        with pytest.raises(NotFoundError):
            await revoke_device(ctx, "never-provisioned")
    finally:
        await connection.close()
        await storage.close()
    assert bundle.broker.status == "added"
    assert revoked.status == "removed"
    assert cut_off


async def test_adding_a_device_again_replaces_its_old_password(mosquitto: Broker) -> None:
    device = f"dev-{uuid.uuid4().hex[:8]}"
    old, new = generate_password(), generate_password()
    connection = await _registry(mosquitto)
    try:
        admin = DynsecAdmin(connection, TOPICS)
        assert (await admin.admit(device, old)).ok
        assert (await admin.admit(device, new)).ok
        with pytest.raises(ConnectRefusedError):
            await asyncio.to_thread(mosquitto.connect, device, old, client_id=device)
        client = await asyncio.to_thread(mosquitto.connect, device, new, client_id=device)
        client.close()
        await admin.revoke(device)
    finally:
        await connection.close()


async def test_a_refusal_of_the_plugin_is_reported(tmp_path: Path) -> None:
    broker = fresh_broker(tmp_path)
    connection = await _registry(broker)
    try:
        admin = DynsecAdmin(connection, TOPICS)
        # Someone deleted the role every device needs on this broker.
        command = {"commands": [{"command": "deleteRole", "rolename": dynsec.DEVICES_ROLE}]}
        await connection.publish(dynsec.CONTROL_TOPIC, json.dumps(command).encode(), retain=False)
        outcome = await admin.admit("dev-new", generate_password())
    finally:
        await connection.close()
        broker.stop()
    assert outcome.status == "refused"
    assert "Role not found" in outcome.detail


async def test_a_broker_without_dynamic_security_is_reported(mosquitto_auth: Broker) -> None:
    connection = await _registry(mosquitto_auth)
    try:
        outcome = await DynsecAdmin(connection, TOPICS, timeout_s=1).admit("dev-x", "pw")
    finally:
        await connection.close()
    assert outcome.status == "no_answer"
    assert "broker-config --force" in outcome.detail


async def test_an_unreachable_broker_is_reported(tmp_path: Path) -> None:
    broker = fresh_broker(tmp_path)
    connection = await _registry(broker)
    try:
        admin = DynsecAdmin(connection, TOPICS)
        broker.stop()
        await asyncio.to_thread(_wait_until, lambda: not connection.connected)
        outcome = await admin.admit("dev-new", generate_password())
    finally:
        await connection.close()
    assert outcome.status == "not_connected"
    assert "restart mosquitto" in outcome.detail


async def test_provisioning_without_a_broker_says_what_to_do(api: Api) -> None:
    response = await api.client.post("/v1/devices", json={"device_id": "dev-z"}, headers=api.auth())
    body = await response.json()
    assert response.status == 201
    assert body["broker"]["status"] == "not_connected"
    assert "broker-config --force" in body["broker"]["detail"]


# --- message and packet size limits ---------------------------------------------------------


def _nothing_retained(broker: Broker, topic: str) -> bool:
    """Whether a new subscriber to `topic` finds no retained message (a barrier proves it)."""
    barrier = f"{P}/trust/barrier-{uuid.uuid4().hex[:8]}"
    with broker.connect(REGISTRY) as registry:
        registry.publish(barrier, b"b", retain=True)
        registry.subscribe(topic)
        registry.subscribe(barrier)
        found = _barrier(registry, barrier)
        registry.publish(barrier, b"", retain=True)
    return found == [barrier]


def test_a_full_size_chunk_goes_through_and_is_retained(mosquitto: Broker) -> None:
    chunk = bytes(range(256)) * (MAX_PAYLOAD_BYTES // 256)
    topic = TOPICS.artifact_chunk(SHA, 0)
    with mosquitto.connect(REGISTRY) as registry:
        assert not registry.publish(topic, chunk, retain=True).is_failure
    try:
        with mosquitto.connect(DEV, client_id=DEV) as device:
            device.subscribe(topic)
            message = device.next_message(30)
    finally:
        with mosquitto.connect(REGISTRY) as registry:
            registry.publish(topic, b"", retain=True)
    assert (len(message.payload), message.retain) == (MAX_PAYLOAD_BYTES, True)
    assert message.payload == chunk


def test_a_payload_over_the_limit_is_dropped_and_not_retained(mosquitto: Broker) -> None:
    topic = TOPICS.state(DEV)
    with mosquitto.connect(REGISTRY) as registry:
        registry.subscribe(topic, retained=False)
        # MQTT 3.1.1, as agents speak: its PUBACK cannot say "too large", the message is gone.
        with mosquitto.connect(DEV, client_id=DEV, protocol=V311) as device:
            device.publish(topic, b"x" * (MAX_PAYLOAD_BYTES + 1), retain=True)
            device.publish(topic, b"after")  # the connection is still usable
            still_connected = not device.connection_lost.is_set()
        received = [m.payload for m in registry.collect_until(topic)]
    assert still_connected
    assert received == [b"after"]
    assert _nothing_retained(mosquitto, topic)


@pytest.mark.parametrize("size", [MAX_PACKET_BYTES + 1, 100 * 1024 * 1024])
def test_a_packet_over_the_limit_disconnects_its_sender(mosquitto: Broker, size: int) -> None:
    topic = TOPICS.state(OTHER)
    with mosquitto.connect(REGISTRY) as registry:
        registry.subscribe(topic, retained=False)
        with mosquitto.connect(OTHER, client_id=OTHER, protocol=V311) as device:
            device.paho.publish(topic, b"x" * size, qos=1, retain=True)
            disconnected = device.connection_lost.wait(30)
        with mosquitto.connect(OTHER, client_id=OTHER) as again:
            again.publish(topic, b"barrier")
        received = [m.payload for m in registry.collect_until(topic)]
        assert not registry.connection_lost.is_set()
    assert disconnected
    assert received == [b"barrier"]
    assert _nothing_retained(mosquitto, topic)


# --- registry replicas share the device reports -------------------------------------------------


async def test_replicas_in_the_shared_group_each_get_a_part_of_the_events(
    mosquitto: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    """mosquitto hands each event to one replica; a group the rules do not name is refused."""
    shared = f"$share/{REGISTRY_SHARE_GROUP}/{TOPICS.device_messages('events')}"
    replicas = []
    for n in (1, 2):
        connection = MqttConnection(
            mosquitto.url, client_id=f"{REGISTRY_CLIENT_ID}-replica-{n}", username=REGISTRY,
            password=mosquitto.password(REGISTRY), connect_timeout_s=10, clean_session=True,
        )  # fmt: skip
        await connection.connect()
        connection.subscribe(shared)
        replicas.append(connection)
    for n, connection in enumerate(replicas):  # refused: the rules name one group only
        connection.subscribe(f"$share/other-{n}/{TOPICS.device_messages('events')}")
    try:
        # The broker answers a client's SUBSCRIBEs in order: once the second one is refused,
        # the shared subscription before it is in place.
        for n in range(len(replicas)):
            refusal = f"refused the subscription to $share/other-{n}/"
            await asyncio.to_thread(_wait_until, lambda r=refusal: r in caplog.text)  # type: ignore[misc]
        sent = [f"event-{i}".encode() for i in range(8)]
        device = await asyncio.to_thread(mosquitto.connect, DEV, client_id=DEV)
        with device:
            for payload in sent:
                device.publish(TOPICS.events(DEV), payload)
        got: list[list[bytes]] = [[], []]
        async with asyncio.timeout(20):  # events that reach no replica fail the test here
            while sum(map(len, got)) < len(sent):
                for n, connection in enumerate(replicas):
                    with contextlib.suppress(asyncio.QueueEmpty):
                        got[n].append(connection.messages.get_nowait().payload)
                await asyncio.sleep(0.02)
        assert sorted(got[0] + got[1]) == sorted(sent)  # each once, none twice
        assert got[0], got  # both replicas took a share
        assert got[1], got
    finally:
        for connection in replicas:
            await connection.close()
