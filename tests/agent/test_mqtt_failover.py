"""Several broker URLs (`[mqtt] urls`): each new attempt goes to the next node, in order.

Against real mosquitto processes standing in for the nodes of a cluster, and a port where
nothing listens standing in for a node that is gone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random

import pytest

from edge_agent.errors import MqttConnectError, MqttDisconnectedError
from edge_agent.mqtt import AgentMqtt, Backoff, Message, run_with_reconnect
from tests.agent.conftest import eventually
from tests.agent.test_mqtt import DEADLINE_S, TOPICS, publish_as_registry, settings_for, unique
from tests.support.broker import LOCALHOST, BrokerFactory, free_port


async def test_a_lost_node_sends_the_agent_to_the_next_one_round_the_list(
    broker_factory: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_common.mqtt")
    first, second = broker_factory.auth(), broker_factory.auth()
    gone = f"mqtt://{LOCALHOST}:{free_port()}"  # nothing listens there
    nodes = (gone, first.url, second.url)
    settings = dataclasses.replace(settings_for(first, "dev-a"), url=gone, urls=nodes)
    release = TOPICS.release(unique("model"), 1)
    connected: list[str] = []  # the node of each connection, as its log line names it
    endings: list[Exception] = []
    received: asyncio.Queue[bytes] = asyncio.Queue()
    subscribed = asyncio.Event()

    async def on_connect(client: AgentMqtt) -> None:
        subscribed.clear()
        await client.subscribe(release)
        subscribed.set()
        lines = [r.getMessage() for r in caplog.records if "MQTT: connected to" in r.getMessage()]
        connected.append(lines[-1].split(" as ")[0].rsplit(":", 1)[1])  # the node's port

    async def on_message(message: Message) -> None:
        await received.put(message.payload)

    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(
            run_with_reconnect(
                settings,
                client_id=unique("dev-a"),
                will=None,
                on_connect=on_connect,
                on_message=on_message,
                backoff=Backoff(0.05, 0.2, rng=random.Random(11)),
                on_disconnect=endings.append,
            )
        )
        await eventually(lambda: len(connected) == 1, "a connection to the second URL")
        await asyncio.to_thread(first.stop)  # the node goes: the next one is the third URL
        await eventually(lambda: len(connected) == 2, "a connection to the third URL")
        await subscribed.wait()
        await publish_as_registry(second, release, b"from the third")
        assert await asyncio.wait_for(received.get(), DEADLINE_S) == b"from the third"
        await asyncio.to_thread(first.start)
        await asyncio.to_thread(second.stop)  # round the list: the gone node, then the first
        await eventually(lambda: len(connected) == 3, "a connection to the first node again")
        running.cancel()

    port = {url: url.rsplit(":", 1)[1] for url in settings.urls}
    assert connected == [port[first.url], port[second.url], port[first.url]]
    assert isinstance(endings[0], MqttConnectError)  # the gone node, tried first
    assert port[gone] in str(endings[0])
    assert isinstance(endings[1], MqttDisconnectedError)  # the first node stopped
    assert port[first.url] in str(endings[1])
