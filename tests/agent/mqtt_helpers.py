"""What the MQTT tests of the agent share: settings for a test broker, waiting for messages,
and the fixtures that check no paho thread outlives a test and give a broker that never answers.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

from edge_agent.config.settings import MqttSettings
from edge_agent.mqtt import AgentMqtt, Message
from edge_protocol.topics import Topics
from tests.support.broker import Broker

TOPICS = Topics()
DEADLINE_S = 10.0  # happy paths take milliseconds


def settings_for(broker: Broker, username: str) -> MqttSettings:
    """How `username` reaches `broker`, with its configured password and the broker's CA."""
    return MqttSettings(
        url=broker.url,
        username=username,
        password=broker.password(username),
        ca_file=broker.ca_file,
    )


def unique(prefix: str) -> str:
    """A fresh client id or topic level, so tests on a shared broker never meet."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def next_message(client: AgentMqtt) -> Message:
    """The next message `client` receives, failing after DEADLINE_S."""
    async with asyncio.timeout(DEADLINE_S):
        async for message in client.messages():
            return message
    raise AssertionError("unreachable: messages() ends by raising")


async def collect_until(client: AgentMqtt, last: Callable[[Message], bool]) -> list[Message]:
    """Every message up to and including the first one for which `last` holds."""
    received: list[Message] = []
    async with asyncio.timeout(DEADLINE_S):
        async for message in client.messages():
            received.append(message)
            if last(message):
                return received
    raise AssertionError("unreachable: messages() ends by raising")


async def publish_as_registry(broker: Broker, topic: str, payload: bytes) -> None:
    """Publish a non-retained QoS 1 message from a short registry connection."""
    async with AgentMqtt(settings_for(broker, "registry"), client_id=unique("registry")) as reg:
        await reg.publish(topic, payload)


async def connect_once(settings: MqttSettings, **options: Any) -> None:
    """Open and close one connection (for the failure cases)."""
    async with AgentMqtt(settings, client_id=unique("dev"), **options):
        pass
