"""An acknowledgement the broker never sends: the wait is bounded, the connection is cut, and a
download resumes on the next connection (or fails naming why once it stalls).

Real mosquitto behind a `TcpRelay` that swallows chosen SUBSCRIBE packets, so the broker never
sees them and never answers, while everything else (pings too) goes on: a node that keeps the
connection up but serves nothing more of it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from edge_agent.config.settings import MqttSettings
from edge_agent.errors import DownloadStalledError, MqttAckTimeoutError, MqttDisconnectedError
from edge_agent.mqtt import AgentMqtt, Backoff, Message, run_with_reconnect
from edge_agent.mqtt.link import LinkState
from edge_agent.storage.store import ModelStore
from edge_agent.update.dispatch import Subscriptions
from edge_agent.update.fetch import MqttChunkFetcher
from tests.agent.blobs import N_CHUNKS, TOPICS, Blob
from tests.agent.mqtt_helpers import DEADLINE_S, next_message, unique
from tests.agent.test_fetch_mqtt import publish_chunks
from tests.support.broker import Broker, RetainedMessages
from tests.support.mqtt_frames import SUBSCRIBE, Packet
from tests.support.relay import TcpRelay

ACK_TIMEOUT_S = 1.0


def plain_settings(broker: Broker) -> MqttSettings:
    """An anonymous login to `broker` (the relay's URL replaces its own)."""
    return MqttSettings(url=broker.url, username="dev-a")


def subscribing_to(prefix: str) -> Callable[[Packet], bool]:
    """Matches a SUBSCRIBE with a filter under `prefix`."""
    return lambda p: p.kind == SUBSCRIBE and any(t.startswith(prefix) for t in p.topics)


async def test_a_suback_that_never_comes_cuts_the_connection_naming_it(
    mosquitto_plain: Broker, retained: RetainedMessages
) -> None:
    held, withheld = unique("edge/v1/held"), unique("edge/v1/withheld")
    retained.publish(mosquitto_plain, held, b"first")
    async with TcpRelay(mosquitto_plain) as relay:
        swallowed = relay.when_client_sends(subscribing_to(withheld), "drop")
        settings = dataclasses.replace(
            plain_settings(mosquitto_plain), url=relay.url, ack_timeout_s=ACK_TIMEOUT_S
        )
        async with AgentMqtt(settings, client_id=unique("dev")) as client:
            await client.subscribe(held)  # the broker answers everything else
            assert (await next_message(client)).payload == b"first"
            with pytest.raises(
                MqttAckTimeoutError, match=f"no SUBACK .* to subscribe to {withheld}"
            ):
                await asyncio.wait_for(client.subscribe(withheld), DEADLINE_S)
            assert swallowed.is_set()
            with pytest.raises(MqttDisconnectedError):  # the stream ends: callers reconnect
                await next_message(client)
            assert not client.connected
            await asyncio.wait_for(relay.broker_closed.wait(), DEADLINE_S)


async def test_a_suback_queued_behind_a_slow_stream_of_messages_is_waited_for(
    mosquitto_plain: Broker, retained: RetainedMessages
) -> None:
    # 12 retained messages of 24 KiB at 96 KiB/s: 3 s of messages, each 0.25 s, reach the
    # client before the second SUBACK. It comes after more than ACK_TIMEOUT_S, never silent.
    prefix = unique("edge/v1/slow")
    for i in range(12):
        retained.publish(mosquitto_plain, f"{prefix}/{i}", bytes([i]) * 24 * 1024)
    async with TcpRelay(mosquitto_plain, to_client_bytes_per_s=96 * 1024) as relay:
        settings = dataclasses.replace(
            plain_settings(mosquitto_plain), url=relay.url, ack_timeout_s=ACK_TIMEOUT_S
        )
        async with AgentMqtt(settings, client_id=unique("dev")) as client:
            await client.subscribe(f"{prefix}/#")
            started = asyncio.get_running_loop().time()
            await asyncio.wait_for(client.subscribe(unique("edge/v1/other")), 60)
            waited = asyncio.get_running_loop().time() - started
            assert client.connected
        assert waited > ACK_TIMEOUT_S, "the SUBACK did not queue behind the messages"


async def fetch_through_the_agent_link(
    broker: Broker, relay: TcpRelay, blob: Blob, tmp_path: Path, *, stall_timeout_s: float
) -> tuple[int, MqttChunkFetcher]:
    """Fetch `blob` as the agent does: its subscriptions, link state and reconnect loop."""
    link, subscriptions = LinkState(up=False), Subscriptions()
    fetcher = MqttChunkFetcher(
        TOPICS, subscriptions.subscribe_live, subscriptions.unsubscribe_live,
        stall_timeout_s=stall_timeout_s, link=link, window=4,
    )  # fmt: skip
    settings = dataclasses.replace(
        plain_settings(broker), url=relay.url, urls=(relay.url,), ack_timeout_s=ACK_TIMEOUT_S,
    )  # fmt: skip

    async def connected(client: AgentMqtt) -> None:
        await subscriptions.renew(client)
        link.connected(session_present=client.session_present)

    async def received(message: Message) -> None:
        fetcher.feed(message.topic, message.payload)

    def ended(_error: Exception) -> None:
        subscriptions.client = None
        link.disconnected()

    follow = run_with_reconnect(
        settings, client_id=unique("dev"), will=None, on_connect=connected,
        on_message=received, backoff=Backoff(0.1, 0.2), on_disconnect=ended,
    )  # fmt: skip
    loop = asyncio.create_task(follow)
    try:
        download = ModelStore(tmp_path).open_download(blob.artifact)
        return await asyncio.wait_for(fetcher.fetch(download), 60), fetcher
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)


async def test_a_download_whose_suback_never_comes_goes_on_over_a_new_connection(
    tmp_path: Path,
    mosquitto_plain: Broker,
    retained: RetainedMessages,
    blob: Blob,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="edge_common.mqtt")
    publish_chunks(retained, mosquitto_plain, blob, range(N_CHUNKS))
    async with TcpRelay(mosquitto_plain) as relay:
        swallowed = relay.when_client_sends(subscribing_to(blob.topic(0)), "drop")
        written, fetcher = await fetch_through_the_agent_link(
            mosquitto_plain, relay, blob, tmp_path, stall_timeout_s=60
        )
        assert swallowed.is_set()
        assert relay.connections >= 2  # the silent connection was dropped, a new one finished
    assert written == N_CHUNKS
    assert fetcher.chunks_written == N_CHUNKS
    assert any("no SUBACK" in r.getMessage() for r in caplog.records)


async def test_a_download_whose_subacks_never_come_fails_saying_so(
    tmp_path: Path, mosquitto_plain: Broker, retained: RetainedMessages, blob: Blob
) -> None:
    publish_chunks(retained, mosquitto_plain, blob, range(N_CHUNKS))
    async with TcpRelay(mosquitto_plain) as relay:
        # Every connection: the first chunk SUBSCRIBE is swallowed, as by a node that is stuck.
        swallowed = relay.when_client_sends(
            subscribing_to(blob.topic(0).rsplit("/", 1)[0]), "drop", every=True
        )
        with pytest.raises(DownloadStalledError, match="subscribing last failed: no SUBACK"):
            await fetch_through_the_agent_link(
                mosquitto_plain, relay, blob, tmp_path, stall_timeout_s=3
            )
        assert relay.fired(swallowed) >= 2  # asked again on new connections before giving up
