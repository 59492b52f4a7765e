"""The MQTT chunk fetcher when the link changes under it: new connections with or without the
session, subscriptions cut short or refused (real mosquitto, real files)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from edge_agent.errors import (
    DownloadFailedError,
    MqttDisconnectedError,
    MqttSubscribeError,
)
from edge_agent.mqtt.link import LinkState
from edge_agent.storage.store import ModelStore
from edge_agent.update.fetch import MqttChunkFetcher
from tests.agent.blobs import N_CHUNKS, TOPICS, Blob
from tests.agent.conftest import eventually
from tests.agent.mqtt_rig import (
    LoopSubscriber,
    flat,
    mqtt_rig,
    publish_chunks,
    received_topics,
)
from tests.support.broker import Broker, RetainedMessages


async def test_mqtt_a_new_connection_without_the_session_subscribes_the_window_again(
    tmp_path: Path, mosquitto_plain: Broker, retained: RetainedMessages, blob: Blob
) -> None:
    link = LinkState()
    rig = await mqtt_rig(mosquitto_plain, window=4, link=link)
    publish_chunks(retained, mosquitto_plain, blob, [0, 1])
    two = asyncio.Event()
    download = ModelStore(tmp_path).open_download(blob.artifact)
    task = asyncio.create_task(rig.fetcher.fetch(download, lambda h, _n: h == 2 and two.set()))
    try:
        await asyncio.wait_for(two.wait(), 10)
        # Half the window is in: the fetcher tops it up with chunks 4 and 5.
        await eventually(lambda: len(rig.subscriber.subscribed) == 2, "a top-up")
        calls = len(rig.subscriber.subscribed)
        awaited = set(flat(rig.subscriber.subscribed)) - received_topics(rig)
        link.disconnected()
        link.connected(session_present=True)  # the broker kept it: nothing to send again
        await asyncio.sleep(0)
        link.disconnected()
        link.connected(session_present=False)  # a broker that forgot us
        await eventually(lambda: len(rig.subscriber.subscribed) > calls, "the fetcher")
        assert set(rig.subscriber.subscribed[calls]) == awaited  # never chunks 0 and 1
        assert {blob.topic(2), blob.topic(3)} <= awaited
        publish_chunks(retained, mosquitto_plain, blob, range(2, N_CHUNKS))
        assert await asyncio.wait_for(task, 10) == N_CHUNKS
    finally:
        rig.subscriber.close()


async def test_mqtt_a_resumed_session_that_brings_nothing_is_asked_once_more(
    tmp_path: Path, mosquitto_plain: Broker, retained: RetainedMessages, blob: Blob
) -> None:
    link = LinkState()
    rig = await mqtt_rig(mosquitto_plain, window=4, link=link, resubscribe_after_s=0.2)
    download = ModelStore(tmp_path).open_download(blob.artifact)
    task = asyncio.create_task(rig.fetcher.fetch(download))
    try:
        await eventually(lambda: len(rig.subscriber.subscribed) == 1, "the fetcher")
        link.disconnected()
        link.connected(session_present=True)
        await eventually(lambda: len(rig.subscriber.subscribed) == 2, "the fetcher")
        assert rig.subscriber.subscribed[1] == rig.subscriber.subscribed[0]
        publish_chunks(retained, mosquitto_plain, blob, range(N_CHUNKS))
        assert await asyncio.wait_for(task, 10) == N_CHUNKS
        assert len(rig.subscriber.subscribed) == 4  # once more, and never again after that
    finally:
        rig.subscriber.close()


async def test_mqtt_a_subscribe_cut_short_by_the_link_waits_for_the_next_connection(
    tmp_path: Path, mosquitto_plain: Broker, retained: RetainedMessages, blob: Blob
) -> None:
    link = LinkState()
    subscriber = LoopSubscriber(mosquitto_plain)
    await subscriber.connect()
    failures = [MqttDisconnectedError("lost the connection to the broker: Keep alive timeout")]

    async def subscribe(topics: Sequence[str]) -> None:
        if failures:
            raise failures.pop()
        await subscriber.subscribe(topics)

    fetcher = MqttChunkFetcher(
        TOPICS, subscribe, subscriber.unsubscribe, stall_timeout_s=10, link=link, window=4
    )
    subscriber.fetcher = fetcher
    publish_chunks(retained, mosquitto_plain, blob, range(N_CHUNKS))
    download = ModelStore(tmp_path).open_download(blob.artifact)
    task = asyncio.create_task(fetcher.fetch(download))
    try:
        await eventually(lambda: not failures, "the fetcher")
        link.disconnected()
        link.connected(session_present=True)  # the SUBSCRIBE never got through: sent again
        assert await asyncio.wait_for(task, 10) == N_CHUNKS
    finally:
        subscriber.close()


def refusal(refused: tuple[str, ...]) -> MqttSubscribeError:
    """What the connection raises when a SUBACK refuses `refused` (and grants the rest)."""
    error = MqttSubscribeError(f"the broker refused the subscription to {', '.join(refused)}")
    error.refused = refused
    return error


async def test_mqtt_a_refused_chunk_subscription_is_asked_again_and_the_rest_held(
    tmp_path: Path, mosquitto_plain: Broker, retained: RetainedMessages, blob: Blob
) -> None:
    subscriber = LoopSubscriber(mosquitto_plain)
    await subscriber.connect()
    refusals = 2  # as NATS does when a JetStream consumer is slow to make: then it grants

    async def subscribe(topics: Sequence[str]) -> None:
        nonlocal refusals
        if refusals and len(topics) > 1:
            refusals -= 1
            granted, refused = topics[: len(topics) // 2], tuple(topics[len(topics) // 2 :])
            await subscriber.subscribe(granted)  # a SUBACK granting some, refusing others
            raise refusal(refused)
        await subscriber.subscribe(topics)

    fetcher = MqttChunkFetcher(
        TOPICS, subscribe, subscriber.unsubscribe, stall_timeout_s=30, window=4
    )
    subscriber.fetcher = fetcher
    publish_chunks(retained, mosquitto_plain, blob, range(N_CHUNKS))
    download = ModelStore(tmp_path).open_download(blob.artifact)
    try:
        assert await asyncio.wait_for(fetcher.fetch(download), 30) == N_CHUNKS
    finally:
        subscriber.close()
    subscribed = flat(subscriber.subscribed)
    assert refusals == 0
    assert sorted(subscribed) == sorted(blob.topic(i) for i in range(N_CHUNKS)), "each once"
    assert fetcher.chunks_received == N_CHUNKS


async def test_mqtt_a_chunk_subscription_refused_every_time_fails_the_download(
    tmp_path: Path, mosquitto_plain: Broker, blob: Blob
) -> None:
    asked: list[Sequence[str]] = []

    async def subscribe(topics: Sequence[str]) -> None:
        asked.append(topics)
        raise refusal((topics[0],))

    async def unsubscribe(topics: Sequence[str]) -> None:
        del topics

    fetcher = MqttChunkFetcher(
        TOPICS, subscribe, unsubscribe, stall_timeout_s=60, window=4, subscribe_tries=3
    )
    download = ModelStore(tmp_path).open_download(blob.artifact)
    with pytest.raises(DownloadFailedError, match="ACL must let this device read the artifact"):
        await asyncio.wait_for(fetcher.fetch(download), 30)
    assert len(asked) == 3  # after 1 s and 2 s: the chunk topic is never granted
    assert asked[1] == [blob.topic(0)]  # only the refused topic is asked for again
