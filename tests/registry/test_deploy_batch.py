"""A deploy to hundreds of devices through the API, on a real broker: each device gets exactly
one assignment, signed for it with the next seq, published and stored alike."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from edge_protocol import TrustedState
from model_registry.home import InitResult
from model_registry.mqtt.client import MqttConnection
from model_registry.mqtt.publisher import Publisher
from tests.registry.conftest import Api
from tests.registry.test_api import _push
from tests.support.broker import Broker, BrokerFactory
from tests.support.models import ModelSet
from tests.support.storage_records import device

FLEET = 300
IDS = [f"unit-{i:03d}" for i in range(FLEET)]
BARRIER = "edge/v1/devices/barrier/assignment"


@dataclass
class Fleet:
    api: Api
    broker: Broker
    root: bytes


@pytest.fixture
async def fleet(
    api: Api, registry_home: InitResult, broker_factory: BrokerFactory, onnx_models: ModelSet
) -> AsyncIterator[Fleet]:
    broker = broker_factory.plain()
    connection = MqttConnection(broker.url, client_id="model-registry-test", connect_timeout_s=10)
    await connection.connect()
    api.ctx.publisher = Publisher(connection, api.ctx.config.topics, api.ctx.blobs)
    api.ctx.broker_link = connection
    await _push(api, onnx_models)
    await _push(api, onnx_models)
    for index, device_id in enumerate(IDS):
        await api.ctx.storage.add_device(device(device_id, "fleet"))
        if index % 3 == 1:  # assigned before: its next seq follows the stored one
            await api.ctx.storage.set_assignment(device_id, index, b"earlier", {})
    # A device that accepted seq 40 from a registry restored from an older backup.
    await api.ctx.storage.record_state(
        IDS[0], {"trust": {"assignment_seq": 40}}, True, device().created
    )
    try:
        yield Fleet(api, broker, (registry_home.home / "root.json").read_bytes())
    finally:
        await connection.close()


def _expected_seq(index: int) -> int:
    if index == 0:
        return 41
    return index + 1 if index % 3 == 1 else 1


async def _deploy(fleet: Fleet, version: int) -> list[tuple[str, bytes]]:
    """Deploy `version` to the group; return every assignment the broker carried meanwhile."""
    watcher = await asyncio.to_thread(fleet.broker.connect, client_id="watcher")
    try:
        await asyncio.to_thread(watcher.subscribe, "edge/v1/devices/+/assignment", retained=False)
        response = await fleet.api.client.post(
            "/v1/deployments",
            json={"model": "clf", "version": version, "group": "fleet"},
            headers=fleet.api.auth(),
        )
        assert response.status == 201, await response.text()
        # Every assignment was acknowledged before the answer: a later message is a barrier.
        await asyncio.to_thread(watcher.publish, BARRIER, b"barrier")
        received = await asyncio.to_thread(watcher.collect_until, BARRIER, 60)
    finally:
        watcher.close()
    return [(m.topic, bytes(m.payload)) for m in received if m.topic != BARRIER]


async def test_each_device_gets_one_assignment_with_its_next_seq(fleet: Fleet) -> None:
    received = await _deploy(fleet, 1)
    topics = [topic for topic, _ in received]
    assert sorted(topics) == sorted(f"edge/v1/devices/{d}/assignment" for d in IDS)
    by_topic = dict(received)
    stored = {d.device_id: d for d in await fleet.api.ctx.storage.devices("fleet")}
    for index, device_id in enumerate(IDS):
        payload = by_topic[f"edge/v1/devices/{device_id}/assignment"]
        assignment = TrustedState(fleet.root, device_id=device_id).verify_assignment(payload)
        assert assignment.seq == _expected_seq(index)
        assert (assignment.models["clf"].version, list(assignment.models)) == (1, ["clf"])
        assert stored[device_id].assignment == payload
        assert stored[device_id].assignment_seq == assignment.seq
    (deployment,) = await fleet.api.ctx.storage.deployments()
    assert deployment.device_ids == tuple(IDS)


async def test_a_second_deploy_moves_every_device_one_seq_on(fleet: Fleet) -> None:
    await _deploy(fleet, 1)
    received = dict(await _deploy(fleet, 2))
    assert len(received) == FLEET
    for index, device_id in enumerate(IDS):
        payload = received[f"edge/v1/devices/{device_id}/assignment"]
        assignment = TrustedState(fleet.root, device_id=device_id).verify_assignment(payload)
        assert (assignment.seq, assignment.models["clf"].version) == (_expected_seq(index) + 1, 2)
