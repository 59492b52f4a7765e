"""The registry's broker link (model_registry/mqtt/client.py) on the shared adapter, through a
relay that cuts it: a publish cut off is sent again on the next connection, a close fails what
still waits, and a first connection that fails says why.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest

from model_registry.errors import ConfigError
from model_registry.mqtt.client import MqttConnection, MqttError
from tests.support.broker import Broker
from tests.support.mqtt_frames import PUBLISH, Packet
from tests.support.relay import TcpRelay

LIVENESS_S = 30.0  # a bound on waiting, never a timing assertion


def _link(url: str, broker: Broker) -> MqttConnection:
    return MqttConnection(
        url, client_id=f"registry-{uuid.uuid4().hex[:8]}", username="registry",
        password=broker.password("registry"), connect_timeout_s=10,
    )  # fmt: skip


async def test_a_publish_cut_by_a_drop_reaches_the_broker_on_the_next_connection(
    mosquitto_auth: Broker,
) -> None:
    topic = f"edge/v1/trust/link-{uuid.uuid4().hex[:8]}"
    async with TcpRelay(mosquitto_auth) as relay:
        link = _link(relay.url, mosquitto_auth)
        await link.connect()
        try:
            cut = relay.when_client_sends(lambda p: p.kind == PUBLISH and topic in p.topics, "cut")
            async with asyncio.timeout(LIVENESS_S):
                await link.publish(topic, b"once", retain=True)  # cut, then sent again
                assert cut.is_set(), "the first attempt never reached the relay"
                assert await link.reconnected.get() == 2
            published: list[Packet] = [p for p in relay.to_broker if topic in p.topics]
            assert len(published) == 1, "what was cut never reached the broker; the resend did"
        finally:
            await link.close()
    with mosquitto_auth.connect("registry") as reader:
        reader.subscribe(topic)
        assert reader.next_message().payload == b"once"
        reader.publish(topic, b"", retain=True)


async def test_close_fails_a_publish_waiting_for_the_link(mosquitto_auth: Broker) -> None:
    async with TcpRelay(mosquitto_auth) as relay:
        link = _link(relay.url, mosquitto_auth)
        await link.connect()
        relay.down()
        async with asyncio.timeout(LIVENESS_S):
            while link.connected:  # noqa: ASYNC110 - the link's own flag, polled
                await asyncio.sleep(0.01)
        waiting = asyncio.create_task(link.publish("edge/v1/trust/never", b"x"))
        await asyncio.sleep(0)
        await link.close()
        with pytest.raises(MqttError, match="closed before the broker acknowledged"):
            await waiting


async def test_a_first_connection_that_fails_says_why(mosquitto_auth: Broker) -> None:
    async with TcpRelay(mosquitto_auth) as relay:
        relay.down()
        link = _link(relay.url, mosquitto_auth)
        with pytest.raises(MqttError, match=r"cannot reach the broker|closed the connection"):
            await link.connect()
        assert not link.connected


def test_a_broker_url_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(ConfigError, match="must not carry credentials") as refused:
        MqttConnection("mqtt://registry:hunter2@broker", client_id="registry")
    assert "hunter2" not in str(refused.value)
