"""The registry acknowledges what it stored, once per device and round, resends included.

The first cases hand messages to `DeviceIngest` on a real SQLite storage and read what it
notes for acknowledgement; the last runs the registry's MQTT side against a real mosquitto,
with the test in the device's seat, subscribed to its `acks` topic.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from edge_protocol import Topics
from edge_protocol.messages import event_payload, parse_ack, telemetry_payload
from model_registry.config import load_config
from model_registry.home import InitResult
from model_registry.mqtt.client import MqttMessage
from model_registry.server import ServeOptions, running_registry
from model_registry.services.acks import ranges_of
from model_registry.services.devices import add_device
from model_registry.services.ingest import DeviceIngest
from tests.registry.conftest import Api
from tests.registry.test_ingest import _metrics
from tests.support.broker import BrokerFactory, MqttTestClient
from tests.support.storage_records import device as device_record

TOPICS = Topics()
DEV, OTHER = "dev-1", "dev-2"
EPOCH = "9f2c4e1a0b7d3e55"


@pytest.fixture
async def ingest(api: Api) -> DeviceIngest:
    """An ingest on the API's storage, with dev-1 and dev-2 provisioned."""
    for device in (DEV, OTHER):
        await add_device(api.ctx, device, group="lab")
    return DeviceIngest(api.ctx, TOPICS)


def _message(topic: str, payload: bytes) -> MqttMessage:
    return MqttMessage(topic, payload, False)


def _telemetry(seq: int, device: str = DEV, epoch: str = EPOCH) -> bytes:
    return telemetry_payload(device, {"msg_epoch": epoch, "msg_seq": seq, "requests": seq})


def _event(seq: int) -> bytes:
    return event_payload(DEV, "received", model="clf", version=1, msg_epoch=EPOCH, msg_seq=seq)


def test_numbers_fold_into_ranges() -> None:
    assert ranges_of([9, 1, 2, 3, 7, 8, 20]) == [(1, 3), (7, 9), (20, 20)]
    assert ranges_of([]) == []


async def test_what_is_stored_or_was_already_stored_is_acknowledged(
    api: Api, ingest: DeviceIngest
) -> None:
    await ingest.handle_batch([_message(TOPICS.telemetry(DEV), _telemetry(seq)) for seq in (7, 8)])
    assert ingest.acks.take() == {(DEV, EPOCH): [(7, 8)]}

    resent = [
        _message(TOPICS.telemetry(DEV), _telemetry(8)),
        _message(TOPICS.events(DEV), _event(9)),
    ]
    await ingest.handle_batch(resent)
    assert ingest.acks.take() == {(DEV, EPOCH): [(8, 9)]}, "a resend is acknowledged again"
    assert ingest.dropped["duplicate"] == 1
    stored = await api.ctx.storage.telemetry(DEV)
    assert sorted(r.body["msg_seq"] for r in stored) == [7, 8], "stored once"


async def test_each_device_and_epoch_gets_its_own_ranges(ingest: DeviceIngest) -> None:
    messages = [
        _message(TOPICS.telemetry(DEV), _telemetry(1)),
        _message(TOPICS.telemetry(OTHER), _telemetry(1, OTHER)),
        _message(TOPICS.telemetry(DEV), _telemetry(3)),
        _message(TOPICS.telemetry(DEV), _telemetry(2)),
        _message(TOPICS.telemetry(DEV), _telemetry(1, epoch="00aa")),
    ]
    await ingest.handle_batch(messages)
    assert ingest.acks.take() == {
        (DEV, EPOCH): [(1, 3)],
        (OTHER, EPOCH): [(1, 1)],
        (DEV, "00aa"): [(1, 1)],
    }
    assert ingest.acks.take() == {}, "taken once"


async def test_only_what_resending_cannot_change_is_acknowledged_unstored(
    ingest: DeviceIngest,
) -> None:
    too_long = _event(5).replace(b'"model":"clf"', b'"model":"' + b"m" * 300 + b'"')
    messages = [
        _message(TOPICS.events(DEV), too_long),  # malformed for good: acknowledged
        _message(TOPICS.telemetry(OTHER), _telemetry(6)),  # names another device: not
        _message(TOPICS.telemetry("ghost"), _telemetry(7, "ghost")),  # never provisioned: not
        _message(TOPICS.telemetry(DEV), telemetry_payload(DEV, {"msg_seq": 8})),  # no epoch
    ]
    await ingest.handle_batch(messages)
    assert ingest.acks.take() == {(DEV, EPOCH): [(5, 5)]}
    assert ingest.dropped["malformed"] == 1


async def test_the_registry_publishes_acks_to_the_device(
    registry_home: InitResult, broker_factory: BrokerFactory
) -> None:
    broker = broker_factory.plain()
    config = load_config(registry_home.home)
    options = ServeOptions(listen="127.0.0.1:0", mqtt_url=broker.url)
    async with running_registry(config, options) as registry:
        await registry.ctx.storage.add_device(device_record(DEV, "lab"))  # a plain broker: no login
        with broker.connect(client_id=DEV) as device:
            device.subscribe(TOPICS.acks(DEV))
            for seq in (1, 2, 3):
                device.publish(TOPICS.telemetry(DEV), _telemetry(seq))
            covered = await _acknowledged(device, {1, 2, 3})
            device.publish(TOPICS.telemetry(DEV), _telemetry(2))  # a resend
            assert await _acknowledged(device, {2}) >= {2}
        stored = await registry.ctx.storage.telemetry(DEV)
        metrics = await _metrics(registry.api_url, registry_home.admin_token)
    assert covered >= {1, 2, 3}
    sent = re.search(r'^model_registry_ingest_acks_total\{outcome="sent"\} (\d+)$', metrics, re.M)
    assert sent is not None
    assert int(sent[1]) >= 2, "the first three, then the resend"
    assert sorted(r.body["msg_seq"] for r in stored) == [1, 2, 3]


async def _acknowledged(device: MqttTestClient, wanted: set[int]) -> set[int]:
    """Read acks messages until they cover `wanted`; return every number they covered."""
    covered: set[int] = set()
    async with asyncio.timeout(20):
        while not wanted <= covered:
            message = await asyncio.to_thread(device.next_message)
            assert message.topic == TOPICS.acks(DEV)
            ack = parse_ack(DEV, message.payload)
            assert ack.epoch == EPOCH
            covered |= {seq for first, last in ack.ranges for seq in range(first, last + 1)}
            assert json.loads(message.payload)["device_id"] == DEV
    return covered
