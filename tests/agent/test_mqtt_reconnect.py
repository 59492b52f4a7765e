"""Losing the broker and coming back: errors when they are due, the reconnect loop, the backoff."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
from dataclasses import replace

import pytest

from edge_agent.config.settings import MqttSettings
from edge_agent.errors import (
    MqttConnectError,
    MqttDisconnectedError,
)
from edge_agent.mqtt import AgentMqtt, Backoff, Message, run_with_reconnect
from edge_common.mqtt import connection
from tests.agent.conftest import eventually
from tests.agent.mqtt_helpers import (
    DEADLINE_S,
    TOPICS,
    collect_until,
    publish_as_registry,
    settings_for,
    unique,
)
from tests.support.broker import LOCALHOST, Broker, BrokerFactory, free_port
from tests.support.relay import TcpRelay

# Every test here checks that no paho network thread outlives it.
pytestmark = pytest.mark.usefixtures("no_network_thread_survives")


# --- losing the broker -------------------------------------------------------------------------


async def test_messages_end_with_an_error_when_the_broker_dies(
    broker_factory: BrokerFactory,
) -> None:
    broker = broker_factory.auth()
    async with AgentMqtt(settings_for(broker, "dev-a"), client_id=unique("dev-a")) as device:
        await device.subscribe(TOPICS.assignment("dev-a"))
        await asyncio.to_thread(broker.stop)
        with pytest.raises(MqttDisconnectedError, match="lost the connection"):
            await collect_until(device, lambda _m: False)
        assert not device.connected
        with pytest.raises(MqttDisconnectedError, match="not connected"):
            await device.publish(TOPICS.events("dev-a"), b"too late")


async def test_a_publish_waiting_for_its_ack_fails_when_the_link_drops(
    mosquitto_auth: Broker,
) -> None:
    async with TcpRelay(mosquitto_auth) as proxy:
        settings = replace(
            settings_for(mosquitto_auth, "dev-a"), url=f"mqtt://{LOCALHOST}:{proxy.port}"
        )
        async with AgentMqtt(settings, client_id=unique("dev-a")) as device:
            proxy.forward_to_client = False  # the PUBACK will never arrive
            sent_before = proxy.bytes_to_broker
            publishing = asyncio.create_task(device.publish(TOPICS.events("dev-a"), b"lost"))
            await eventually(lambda: proxy.bytes_to_broker > sent_before, "PUBLISH sent")
            proxy.cut()
            with pytest.raises(MqttDisconnectedError, match="lost the connection"):
                await publishing


async def test_a_link_too_clogged_for_a_clean_disconnect_is_cut(
    mosquitto_auth: Broker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(connection, "CLOSE_GRACE_S", 0.2)  # instead of waiting 5 s
    async with TcpRelay(mosquitto_auth) as proxy:
        settings = replace(
            settings_for(mosquitto_auth, "dev-a"), url=f"mqtt://{LOCALHOST}:{proxy.port}"
        )
        async with AgentMqtt(settings, client_id=unique("dev-a")) as device:
            proxy.reading_from_client.clear()
            # More than the socket buffers on both sides hold: the DISCONNECT queues behind it.
            big = bytes(32 * 1024 * 1024)
            publishing = asyncio.create_task(device.publish(TOPICS.events("dev-a"), big))
            await asyncio.sleep(0)  # let the task issue its PUBLISH before we leave
        assert not device.connected
        with pytest.raises(MqttDisconnectedError):
            await publishing
    assert "cutting the connection" in caplog.text


async def test_run_with_reconnect_survives_a_broker_outage(
    broker_factory: BrokerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_common.mqtt")
    broker = broker_factory.auth()
    release = TOPICS.release(unique("model"), 1)
    connects: list[bool] = []  # session_present of each connection
    endings: list[Exception] = []
    received: asyncio.Queue[Message] = asyncio.Queue()

    async def on_connect(client: AgentMqtt) -> None:
        present = client.session_present
        await client.subscribe(release)  # a restarted broker has forgotten the session
        connects.append(present)  # counted once subscribed: what is published next arrives

    async def next_payload() -> bytes:
        return (await asyncio.wait_for(received.get(), DEADLINE_S)).payload

    async with asyncio.TaskGroup() as tasks:
        running = tasks.create_task(
            run_with_reconnect(
                settings_for(broker, "dev-a"),
                client_id=unique("dev-a"),
                will=None,
                on_connect=on_connect,
                on_message=received.put,
                backoff=Backoff(0.05, 0.2, rng=random.Random(7)),
                on_disconnect=endings.append,
            )
        )
        await eventually(lambda: len(connects) == 1, "first connection")
        await publish_as_registry(broker, release, b"before")
        assert await next_payload() == b"before"

        await asyncio.to_thread(broker.stop)
        await eventually(lambda: len(endings) >= 2, "the drop and a failed retry")
        await asyncio.to_thread(broker.start)  # same port, empty broker
        await eventually(lambda: len(connects) == 2, "reconnection")
        await publish_as_registry(broker, release, b"after")
        assert await next_payload() == b"after"
        running.cancel()

    assert connects == [False, False]
    assert isinstance(endings[0], MqttDisconnectedError)
    assert all(isinstance(e, MqttConnectError) for e in endings[1:])
    log_text = caplog.text
    assert log_text.count("MQTT: connected to") == 2
    assert "lost the connection" in log_text
    assert "reconnecting to" in log_text
    assert "dev-a-secret" not in log_text


# --- backoff -----------------------------------------------------------------------------------


class Extremes(random.Random):
    """A generator that only ever draws the ends of its range: 0.0, then just below 1.0."""

    def __init__(self) -> None:
        super().__init__(0)
        self.draws = 0

    def random(self) -> float:
        self.draws += 1
        return 0.0 if self.draws % 2 else 1.0 - 2**-53


def test_backoff_ceilings_double_up_to_the_cap_above_the_floor() -> None:
    rng = random.Random(1)
    ceilings = [1.0, 2.0, 4.0, 8.0, 8.0, 8.0, 8.0]  # min_s 0.5: the first ceiling is 2 * min_s
    runs = []
    for _ in range(300):
        backoff = Backoff(0.5, 8.0, rng=rng)
        runs.append([backoff.next_delay() for _ in ceilings])
    for attempt, ceiling in enumerate(ceilings):
        delays = [run[attempt] for run in runs]
        assert all(0.5 <= d <= ceiling for d in delays)
        # The jitter uses the whole, growing range above the floor.
        assert max(delays) > 0.5 + 0.9 * (ceiling - 0.5)
        assert min(delays) < 0.5 + 0.1 * (ceiling - 0.5)


@pytest.mark.parametrize(("min_s", "max_s"), [(0.1, 60.0), (1.0, 60.0), (5.0, 7.0), (3.0, 3.0)])
def test_backoff_never_waits_less_than_min_s_nor_more_than_max_s(
    min_s: float, max_s: float
) -> None:
    for rng in (Extremes(), random.Random(5)):
        backoff = Backoff(min_s, max_s, rng=rng)
        delays = [backoff.next_delay() for _ in range(40)]
        backoff.reset()
        delays += [backoff.next_delay() for _ in range(40)]
        assert all(min_s <= d <= max_s for d in delays), (min_s, max_s, delays)
    assert Backoff(min_s, max_s, rng=Extremes()).next_delay() == min_s  # the floor is reachable


def test_backoff_with_equal_bounds_waits_exactly_that_long() -> None:
    backoff = Backoff(2.5, 2.5, rng=random.Random(9))
    assert {backoff.next_delay() for _ in range(20)} == {2.5}


def test_backoff_reset_starts_over() -> None:
    backoff = Backoff(0.5, 60.0, rng=random.Random(3))
    for _ in range(10):
        backoff.next_delay()
    assert backoff.next_delay() > 1.0  # the ceiling has grown to 60 s by now
    backoff.reset()
    assert 0.5 <= backoff.next_delay() <= 1.0


async def test_run_with_reconnect_waits_at_least_reconnect_min_s_between_attempts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_common.mqtt")
    settings = MqttSettings(url=f"mqtt://{LOCALHOST}:{free_port()}", username="dev-a")  # nobody
    endings: list[Exception] = []

    async def never_called(_client: AgentMqtt | Message) -> None:
        raise AssertionError("no broker listens, so nothing connects")

    running = asyncio.create_task(
        run_with_reconnect(
            settings,
            client_id=unique("dev-a"),
            will=None,
            on_connect=never_called,
            on_message=never_called,
            backoff=Backoff(0.2, 0.5, rng=Extremes()),
            on_disconnect=endings.append,
        )
    )
    try:
        await eventually(lambda: len(endings) >= 4, "four failed connection attempts")
    finally:
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
    assert all(isinstance(e, MqttConnectError) for e in endings)
    waits = [float(w) for w in re.findall(r"reconnecting to \S+ in (\d+\.\d+) s", caplog.text)]
    assert len(waits) >= 4, caplog.text
    # Extremes draws the lowest delay first: the old full jitter waited 0.00 s here.
    assert waits[0] == 0.2
    assert all(0.2 <= w <= 0.5 for w in waits), waits


def test_backoff_is_deterministic_with_a_seeded_rng() -> None:
    def delays(seed: int) -> list[float]:
        backoff = Backoff(1.0, 60.0, rng=random.Random(seed))
        return [backoff.next_delay() for _ in range(10)]

    assert delays(42) == delays(42)
    assert delays(42) != delays(43)


@pytest.mark.parametrize(("min_s", "max_s"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_backoff_rejects_bad_bounds(min_s: float, max_s: float) -> None:
    with pytest.raises(ValueError, match="0 < min_s <= max_s"):
        Backoff(min_s, max_s)
