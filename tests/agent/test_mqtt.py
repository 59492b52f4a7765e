"""The agent's MQTT adapter against real mosquitto brokers (and the embedded amqtt one).

Real paho clients on both ends; a small TCP relay stands in for a network that can fail.
Every wait has a deadline; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
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
from edge_agent.mqtt import AgentMqtt, Message
from tests.agent.mqtt_helpers import (
    DEADLINE_S,
    TOPICS,
    collect_until,
    connect_once,
    next_message,
    publish_as_registry,
    settings_for,
    unique,
)
from tests.support.broker import LOCALHOST, Broker, BrokerFactory, RetainedMessages, free_port
from tests.support.certs import issue_client_cert
from tests.support.relay import TcpRelay

# Every test here checks that no paho network thread outlives it.
pytestmark = pytest.mark.usefixtures("no_network_thread_survives")


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
