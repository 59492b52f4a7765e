"""The agent's MQTT adapter against real mosquitto brokers (and the embedded amqtt one).

Real paho clients on both ends; a small TCP relay stands in for a network that can fail.
Every wait has a deadline; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.settings import MqttSettings
from edge_agent.errors import (
    ConfigError,
    MqttConnectError,
    MqttDisconnectedError,
    MqttSubscribeError,
)
from edge_agent.mqtt import AgentMqtt, Backoff, Message, run_with_reconnect
from edge_common.mqtt import connection
from edge_protocol.topics import Topics
from tests.agent.conftest import eventually
from tests.support.broker import LOCALHOST, Broker, BrokerFactory, RetainedMessages, free_port
from tests.support.certs import issue_client_cert
from tests.support.relay import TcpRelay

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


@pytest.fixture(autouse=True)
def no_network_thread_survives() -> Iterator[None]:
    """Leaving `async with AgentMqtt` has stopped paho's network thread, whatever happened."""
    yield
    survivors = [t.name for t in threading.enumerate() if t.name.startswith("paho-mqtt-client")]
    assert survivors == []


@pytest.fixture
async def silent_broker() -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A TCP listener that accepts and reads but never answers; yields (port, ended event)."""
    ended = asyncio.Event()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the client goes away
        ended.set()
        writer.close()

    server = await asyncio.start_server(swallow, LOCALHOST, 0)
    yield int(server.sockets[0].getsockname()[1]), ended
    server.close()
    await server.wait_closed()


# --- connecting, publishing, subscribing -----------------------------------------------------


async def test_round_trip_at_qos1_with_a_retained_message(
    mosquitto_auth: Broker, retained: RetainedMessages
) -> None:
    broker = mosquitto_auth
    release, events, assignment = (
        TOPICS.release(unique("model"), 1),
        TOPICS.events("dev-a"),
        TOPICS.assignment("dev-a"),
    )
    retained.publish(broker, release, b"retained release")
    async with (
        AgentMqtt(settings_for(broker, "registry"), client_id=unique("registry")) as registry,
        AgentMqtt(settings_for(broker, "dev-a"), client_id=unique("dev-a")) as device,
    ):
        assert registry.connected
        assert device.connected
        await registry.subscribe(events)
        await device.subscribe(release, assignment)
        assert await next_message(device) == Message(release, b"retained release", retain=True)
        await registry.publish(release, b"live release")
        assert await next_message(device) == Message(release, b"live release", retain=False)
        await device.publish(events, b"event")
        assert await next_message(registry) == Message(events, b"event", retain=False)

        await device.unsubscribe(release)
        await registry.publish(release, b"not for the device any more")
        await registry.publish(assignment, b"barrier")  # delivered in order after the above
        got = await collect_until(device, lambda m: m.topic == assignment)
        assert [m.payload for m in got] == [b"barrier"]


async def test_bad_credentials_are_refused_naming_the_user(mosquitto_auth: Broker) -> None:
    wrong = unique("wrong")
    settings = replace(settings_for(mosquitto_auth, "dev-a"), password=wrong)
    with pytest.raises(MqttConnectError, match="refused the credentials of dev-a") as caught:
        await connect_once(settings)
    assert wrong not in str(caught.value)
    assert "is mqtt.password_file the one of this device's bundle?" in str(caught.value)


async def test_an_unreachable_port_is_a_connect_error() -> None:
    settings = MqttSettings(url=f"mqtt://{LOCALHOST}:{free_port()}", username="dev-a")
    with pytest.raises(MqttConnectError, match=r"cannot reach the broker at 127\.0\.0\.1"):
        await connect_once(settings)


async def test_a_broker_that_never_answers_times_out(
    silent_broker: tuple[int, asyncio.Event],
) -> None:
    port, ended = silent_broker
    settings = MqttSettings(url=f"mqtt://{LOCALHOST}:{port}", username="dev-a")
    with pytest.raises(MqttConnectError, match="no answer from the broker"):
        await connect_once(settings, connect_timeout_s=0.5)
    await asyncio.wait_for(ended.wait(), DEADLINE_S)  # and the abandoned socket was closed


async def test_cancelling_a_connect_propagates_and_closes_the_socket(
    silent_broker: tuple[int, asyncio.Event],
) -> None:
    port, ended = silent_broker
    settings = MqttSettings(url=f"mqtt://{LOCALHOST}:{port}", username="dev-a")
    connecting = asyncio.create_task(connect_once(settings))
    with pytest.raises(TimeoutError):  # still waiting for the CONNACK that never comes
        await asyncio.wait_for(asyncio.shield(connecting), 0.2)
    connecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await connecting
    await asyncio.wait_for(ended.wait(), DEADLINE_S)


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"url": "http://broker:1883"}, "must look like mqtt://"),
        ({"url": "mqtt://broker:99999"}, "bad port"),
        ({"url": "mqtt://dev-a:hunter2@broker"}, "must not carry credentials"),
        ({"ca_file": Path("ca.pem")}, "must be mqtts://"),
        ({"url": "mqtts://broker", "ca_file": Path("/nonexistent/ca.pem")}, "TLS files"),
    ],
)
def test_bad_settings_fail_before_connecting(changes: dict[str, Any], complaint: str) -> None:
    settings = replace(MqttSettings(url="mqtt://broker", username="dev-a"), **changes)
    with pytest.raises(ConfigError, match=complaint):
        AgentMqtt(settings, client_id="dev-a")


# --- TLS ---------------------------------------------------------------------------------------


async def test_tls_with_the_fleet_ca(mosquitto_tls: Broker) -> None:
    async with AgentMqtt(settings_for(mosquitto_tls, "dev-a"), client_id=unique("dev-a")) as dev:
        await dev.publish(TOPICS.events("dev-a"), b"over TLS")


async def test_tls_without_trusting_the_ca_fails(mosquitto_tls: Broker) -> None:
    settings = replace(settings_for(mosquitto_tls, "dev-a"), ca_file=None)  # system store only
    with pytest.raises(MqttConnectError, match=r"certificate of the broker .* is not trusted"):
        await connect_once(settings)


async def test_tls_client_certificates(broker_factory: BrokerFactory, tmp_path: Path) -> None:
    broker = broker_factory.tls(require_certificate=True)
    assert broker.ca is not None
    cert, key = issue_client_cert(broker.ca, "dev-a").write(tmp_path, "dev-a")
    settings = settings_for(broker, "dev-a")
    with_cert = replace(settings, client_cert=cert, client_key=key)
    async with AgentMqtt(with_cert, client_id=unique("dev-a")) as device:
        await device.publish(TOPICS.events("dev-a"), b"mutual TLS")
    with pytest.raises(MqttConnectError, match="TLS client certificate"):
        await connect_once(settings)


# --- the last will -----------------------------------------------------------------------------


async def test_the_will_is_published_when_the_link_dies(
    mosquitto_auth: Broker, retained: RetainedMessages
) -> None:
    broker, state = mosquitto_auth, TOPICS.state("dev-a")
    retained.publish(broker, state, b"initial")  # a known start, deleted after the test
    observer_settings = settings_for(broker, "registry")
    async with AgentMqtt(observer_settings, client_id=unique("observer")) as observer:
        await observer.subscribe(state)
        assert (await next_message(observer)).payload == b"initial"
        async with TcpRelay(broker) as proxy:
            device_settings = replace(
                settings_for(broker, "dev-a"), url=f"mqtt://{LOCALHOST}:{proxy.port}"
            )
            will = (state, b"offline")
            async with AgentMqtt(device_settings, client_id=unique("dev-a"), will=will) as device:
                await device.publish(state, b"online", retain=True)
                assert (await next_message(observer)).payload == b"online"
                proxy.cut()
                with pytest.raises(MqttDisconnectedError, match="lost the connection"):
                    await next_message(device)
                assert not device.connected
        assert await next_message(observer) == Message(state, b"offline", retain=False)


async def test_a_clean_exit_does_not_publish_the_will(
    mosquitto_auth: Broker, retained: RetainedMessages
) -> None:
    broker, state, events = mosquitto_auth, TOPICS.state("dev-a"), TOPICS.events("dev-a")
    retained.publish(broker, state, b"initial")
    observer_settings = settings_for(broker, "registry")
    async with AgentMqtt(observer_settings, client_id=unique("observer")) as observer:
        await observer.subscribe(state, events)
        assert (await next_message(observer)).payload == b"initial"
        async with TcpRelay(broker) as proxy:
            device_settings = replace(
                settings_for(broker, "dev-a"), url=f"mqtt://{LOCALHOST}:{proxy.port}"
            )
            will = (state, b"offline")
            async with AgentMqtt(device_settings, client_id=unique("dev-a"), will=will) as device:
                await device.publish(state, b"online", retain=True)
            # The broker closed its side: it has handled the DISCONNECT and any will by now.
            await asyncio.wait_for(proxy.broker_closed.wait(), DEADLINE_S)
        await observer.publish(events, b"barrier")
        got = await collect_until(observer, lambda m: m.topic == events)
    assert [m.payload for m in got] == [b"online", b"barrier"]


# --- sessions and access control ---------------------------------------------------------------


async def test_a_persistent_session_delivers_what_was_sent_while_away(
    mosquitto_auth: Broker,
) -> None:
    broker, assignment = mosquitto_auth, TOPICS.assignment("dev-a")
    settings, client_id = settings_for(broker, "dev-a"), unique("dev-a")
    async with AgentMqtt(settings, client_id=client_id) as device:
        assert not device.session_present
        await device.subscribe(assignment)
    missed = unique("missed").encode()
    await publish_as_registry(broker, assignment, missed)  # not retained: only the session keeps it
    async with AgentMqtt(settings, client_id=client_id) as device:
        assert device.session_present
        got = await collect_until(device, lambda m: m.payload == missed)  # no subscribe needed
    assert got[-1] == Message(assignment, missed, retain=False)


async def test_a_device_does_not_receive_another_devices_assignment(
    mosquitto_auth: Broker, retained: RetainedMessages
) -> None:
    broker = mosquitto_auth
    own, other = TOPICS.assignment("dev-a"), TOPICS.assignment("dev-b")
    barrier = TOPICS.release(unique("barrier"), 1)
    retained.publish(broker, other, b"for dev-b")
    retained.publish(broker, own, b"for dev-a")
    async with AgentMqtt(settings_for(broker, "dev-a"), client_id=unique("dev-a")) as device:
        # mosquitto 2.0.11 grants the forbidden filter and filters at delivery instead.
        await device.subscribe(other, own, barrier)
        await publish_as_registry(broker, other, b"live for dev-b")
        # One client's messages arrive in order: anything from `other` would come before this.
        await publish_as_registry(broker, barrier, b"barrier")
        got = await collect_until(device, lambda m: m.topic == barrier)
    assert got == [Message(own, b"for dev-a", retain=True), Message(barrier, b"barrier", False)]


async def test_the_embedded_broker_speaks_311_and_refuses_forbidden_filters() -> None:
    from model_registry.mqtt.credentials import generate_password, hash_password
    from model_registry.mqtt.embedded import EmbeddedBroker

    password = generate_password()
    stored = {"dev-a": hash_password(password)}
    embedded = EmbeddedBroker(
        LOCALHOST, 0, topics=TOPICS, registry_user="registry", password_lookup=stored.get
    )
    async with embedded:
        settings = MqttSettings(url=embedded.url, username="dev-a", password=password)
        async with AgentMqtt(settings, client_id="dev-a") as device:
            await device.subscribe(TOPICS.assignment("dev-a"))
            with pytest.raises(MqttSubscribeError, match="devices/dev-b/assignment"):
                await device.subscribe(TOPICS.assignment("dev-b"))
            await device.publish(TOPICS.state("dev-a"), b"online", retain=True)


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
        connects.append(client.session_present)
        await client.subscribe(release)  # a restarted broker has forgotten the session

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
