"""The reconnect loop outlives its handlers: an exception in one is logged and reported.

Against a real mosquitto. A handler that raises must neither end the connection (a clean
DISCONNECT would also discard the will, leaving the device shown online) nor end the loop.
"""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from edge_agent.mqtt import AgentMqtt, Backoff, Message, run_with_reconnect
from tests.agent.conftest import eventually
from tests.agent.mqtt_helpers import DEADLINE_S, TOPICS, publish_as_registry, settings_for, unique
from tests.support.broker import Broker


class HandlerBugError(Exception):
    """What a handler with a bug raises."""


async def test_an_exception_in_a_message_handler_keeps_the_connection(
    mosquitto_auth: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="edge_common.mqtt")
    broker, release = mosquitto_auth, TOPICS.release(unique("model"), 1)
    connects: list[AgentMqtt] = []
    endings: list[Exception] = []
    reported: list[tuple[str, str]] = []
    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_connect(client: AgentMqtt) -> None:
        # Counted once subscribed: a retained message published before the SUBACK would only
        # be delivered as the topic's latest.
        await client.subscribe(release)
        connects.append(client)

    async def on_message(message: Message) -> None:
        if message.payload.startswith(b"boom"):
            raise HandlerBugError(f"cannot handle {message.payload!r}")
        await received.put(message.payload)

    async def on_handler_error(message: Message, error: Exception) -> None:
        reported.append((message.topic, str(error)))

    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(
            run_with_reconnect(
                settings_for(broker, "dev-a"),
                client_id=unique("dev-a"),
                will=None,
                on_connect=on_connect,
                on_message=on_message,
                backoff=Backoff(0.05, 0.2, rng=random.Random(3)),
                on_disconnect=endings.append,
                on_handler_error=on_handler_error,
            )
        )
        await eventually(lambda: len(connects) == 1, "first connection")
        for payload in (b"boom-1", b"boom-2", b"after"):
            await publish_as_registry(broker, release, payload)
        assert await asyncio.wait_for(received.get(), DEADLINE_S) == b"after"
        assert connects[0].connected, "the same connection is still up"
        running.cancel()

    assert (len(connects), endings) == (1, [])
    assert reported == [(release, "cannot handle b'boom-1'"), (release, "cannot handle b'boom-2'")]
    assert caplog.text.count("HandlerBugError: cannot handle") == 2, "logged with its traceback"


async def test_an_exception_in_on_connect_reconnects_instead_of_ending_the_loop(
    mosquitto_auth: Broker,
) -> None:
    broker = mosquitto_auth
    attempts: list[AgentMqtt] = []
    endings: list[Exception] = []

    async def on_connect(client: AgentMqtt) -> None:
        attempts.append(client)
        if len(attempts) == 1:
            raise HandlerBugError("the first on_connect fails")

    async def on_message(message: Message) -> None:
        del message

    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(
            run_with_reconnect(
                settings_for(broker, "dev-a"),
                client_id=unique("dev-a"),
                will=None,
                on_connect=on_connect,
                on_message=on_message,
                backoff=Backoff(0.05, 0.2, rng=random.Random(5)),
                on_disconnect=endings.append,
            )
        )
        await eventually(lambda: len(attempts) == 2, "a second connection")
        assert attempts[1].connected
        running.cancel()
    assert len(endings) == 1
    assert "the first on_connect fails" in str(endings[0])
