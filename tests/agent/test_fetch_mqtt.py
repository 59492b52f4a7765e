"""Chunk fetchers against a real mosquitto broker and a real aiohttp server, on real files."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.enums import MQTTErrorCode

from edge_agent.errors import (
    DownloadFailedError,
    DownloadStalledError,
    MqttDisconnectedError,
    MqttSubscribeError,
)
from edge_agent.mqtt.link import LinkState
from edge_agent.storage.store import ModelStore
from edge_agent.update.fetch import MqttChunkFetcher
from edge_protocol.errors import ChunkHashError, SizeExceededError
from tests.agent.blobs import CHUNK, N_CHUNKS, TOPICS, Blob, make_blob, sha256_of
from tests.agent.conftest import eventually
from tests.support.broker import Broker, RetainedMessages


class LoopSubscriber:
    """The agent's MQTT side in miniature: paho thread callbacks handed to the loop."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.fetcher: MqttChunkFetcher | None = None
        self.subscribed: list[list[str]] = []
        self.unsubscribed: list[list[str]] = []
        self.received: list[tuple[str, bytes]] = []
        self._watched: dict[tuple[str, bytes], asyncio.Event] = {}
        self._loop = asyncio.get_running_loop()
        self._acks: dict[int, asyncio.Future[None]] = {}
        client = broker.paho_client(reconnect_on_failure=False)
        client.on_connect = lambda *_args: self._from_thread(0)
        client.on_subscribe = lambda _c, _u, mid, *_rest: self._from_thread(mid)
        client.on_unsubscribe = lambda _c, _u, mid, *_rest: self._from_thread(mid)
        client.on_message = lambda _c, _u, m: self._loop.call_soon_threadsafe(
            self._deliver, m.topic, m.payload
        )
        self.client = client

    async def connect(self) -> None:
        ack = self._expect(0)  # CONNACK has no message id; 0 is never used for packets
        self.client.connect(self.broker.host, self.broker.port)
        self.client.loop_start()
        await asyncio.wait_for(ack, 10)

    async def subscribe(self, topics: Sequence[str]) -> None:
        self.subscribed.append(list(topics))
        result, mid = self.client.subscribe([(topic, 1) for topic in topics])
        assert result == MQTTErrorCode.MQTT_ERR_SUCCESS
        assert mid is not None
        await asyncio.wait_for(self._expect(mid), 10)

    async def unsubscribe(self, topics: Sequence[str]) -> None:
        self.unsubscribed.append(list(topics))
        result, mid = self.client.unsubscribe(list(topics))
        assert result == MQTTErrorCode.MQTT_ERR_SUCCESS
        assert mid is not None
        await asyncio.wait_for(self._expect(mid), 10)

    def watch(self, topic: str, payload: bytes) -> asyncio.Event:
        """Return an event set when this exact message arrives."""
        return self._watched.setdefault((topic, payload), asyncio.Event())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _expect(self, mid: int) -> asyncio.Future[None]:
        # Registered before the ack can run: acks reach the loop via call_soon_threadsafe.
        future: asyncio.Future[None] = self._loop.create_future()
        self._acks[mid] = future
        return future

    def _from_thread(self, mid: int) -> None:
        self._loop.call_soon_threadsafe(self._ack, mid)

    def _ack(self, mid: int) -> None:
        future = self._acks.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)

    def _deliver(self, topic: str, payload: bytes) -> None:
        self.received.append((topic, payload))
        if (topic, payload) in self._watched:
            self._watched[topic, payload].set()
        if self.fetcher is not None:
            self.fetcher.feed(topic, payload)


@dataclass
class MqttRig:
    """A connected subscriber and a fetcher that uses it."""

    subscriber: LoopSubscriber
    fetcher: MqttChunkFetcher

    def subscribed_topics(self) -> list[str]:
        return [topic for call in self.subscriber.subscribed for topic in call]


async def mqtt_rig(broker: Broker, **options: Any) -> MqttRig:
    subscriber = LoopSubscriber(broker)
    await subscriber.connect()
    options.setdefault("stall_timeout_s", 10.0)
    fetcher = MqttChunkFetcher(TOPICS, subscriber.subscribe, subscriber.unsubscribe, **options)
    subscriber.fetcher = fetcher
    return MqttRig(subscriber, fetcher)


def received_topics(rig: MqttRig) -> set[str]:
    return {topic for topic, payload in rig.subscriber.received if payload}


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def rig(mosquitto_plain: Broker) -> AsyncIterator[MqttRig]:
    made = await mqtt_rig(mosquitto_plain, window=4)
    yield made
    made.subscriber.close()


def publish_chunks(
    retained: RetainedMessages, broker: Broker, blob: Blob, indices: Sequence[int]
) -> None:
    """Publish chunks as the registry does: retained, QoS 1, one topic per chunk."""
    for index in indices:
        retained.publish(broker, blob.topic(index), blob.chunk(index))


def flat(calls: list[list[str]]) -> list[str]:
    return [topic for call in calls for topic in call]


async def test_mqtt_downloads_every_chunk_through_a_sliding_window(
    tmp_path: Path, mosquitto_plain: Broker, retained: RetainedMessages, rig: MqttRig, blob: Blob
) -> None:
    publish_chunks(retained, mosquitto_plain, blob, range(N_CHUNKS))
    download = ModelStore(tmp_path).open_download(blob.artifact)
    seen: list[tuple[int, int]] = []

    written = await rig.fetcher.fetch(download, progress=lambda have, n: seen.append((have, n)))

    assert written == N_CHUNKS == rig.fetcher.chunks_written == rig.fetcher.chunks_received
    assert seen == [(have, N_CHUNKS) for have in range(1, N_CHUNKS + 1)]
    subscribed = flat(rig.subscriber.subscribed)
    assert sorted(subscribed) == sorted(blob.topic(i) for i in range(N_CHUNKS)), "each once"
    assert max(len(call) for call in rig.subscriber.subscribed) <= 4
    assert sorted(flat(rig.subscriber.unsubscribed)) == sorted(subscribed)
    assert sha256_of(download.finalize()) == blob.artifact.sha256


async def test_mqtt_never_asks_for_more_than_the_window(
    tmp_path: Path, mosquitto_plain: Broker, retained: RetainedMessages, rig: MqttRig, blob: Blob
) -> None:
    download = ModelStore(tmp_path).open_download(blob.artifact)
    task = asyncio.create_task(rig.fetcher.fetch(download))
    for index in range(N_CHUNKS):  # one chunk at a time, as a slow link brings them
        topic = blob.topic(index)
        await eventually(lambda t=topic: t in flat(rig.subscriber.subscribed), topic)
        outstanding = set(flat(rig.subscriber.subscribed)) - set(flat(rig.subscriber.unsubscribed))
        assert len(outstanding - received_topics(rig)) <= 4
        publish_chunks(retained, mosquitto_plain, blob, [index])
    assert await asyncio.wait_for(task, 10) == N_CHUNKS


async def test_mqtt_resumes_after_a_restart_fetching_only_the_missing_chunks(
    tmp_path: Path, mosquitto_plain: Broker, retained: RetainedMessages, rig: MqttRig, blob: Blob
) -> None:
    publish_chunks(retained, mosquitto_plain, blob, range(6))
    six_on_disk = asyncio.Event()

    def progress(have: int, _total: int) -> None:
        if have == 6:
            six_on_disk.set()

    download = ModelStore(tmp_path).open_download(blob.artifact)
    task = asyncio.create_task(rig.fetcher.fetch(download, progress))
    await asyncio.wait_for(six_on_disk.wait(), 10)
    task.cancel()  # the agent stops mid-download, waiting for chunk 6
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(flat(rig.subscriber.unsubscribed)) == sorted(flat(rig.subscriber.subscribed))
    publish_chunks(retained, mosquitto_plain, blob, range(6, N_CHUNKS))

    # A restarted agent: new store, new download object, new MQTT client and fetcher.
    resumed = ModelStore(tmp_path).open_download(blob.artifact)
    missing = resumed.missing()
    assert missing == list(range(6, N_CHUNKS))
    second = await mqtt_rig(mosquitto_plain, window=4)
    try:
        written = await second.fetcher.fetch(resumed)
    finally:
        second.subscriber.close()

    assert written == len(missing) == second.fetcher.chunks_written
    assert sorted(second.subscribed_topics()) == sorted(blob.topic(i) for i in missing)
    assert sha256_of(resumed.finalize()) == blob.artifact.sha256


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (lambda chunk: bytes([chunk[0] ^ 0xFF]) + chunk[1:], ChunkHashError),
        (lambda chunk: chunk + b"\0", SizeExceededError),
    ],
)
async def test_mqtt_a_bad_chunk_rejects_the_download_and_is_never_written(
    tmp_path: Path,
    mosquitto_plain: Broker,
    retained: RetainedMessages,
    rig: MqttRig,
    blob: Blob,
    *,
    payload: Callable[[bytes], bytes],
    error: type[Exception],
) -> None:
    retained.publish(mosquitto_plain, blob.topic(0), payload(blob.chunk(0)))
    publish_chunks(retained, mosquitto_plain, blob, range(1, N_CHUNKS))
    store = ModelStore(tmp_path)
    download = store.open_download(blob.artifact)

    with pytest.raises(error):
        await rig.fetcher.fetch(download)

    assert 0 in download.missing()
    assert ModelStore(tmp_path).open_download(blob.artifact).missing()[0] == 0
    part = store.downloads_dir / f"{blob.artifact.sha256}.part"
    assert part.read_bytes()[:CHUNK] == bytes(CHUNK)
    assert sorted(flat(rig.subscriber.unsubscribed)) == sorted(flat(rig.subscriber.subscribed))


async def test_mqtt_ignores_empty_payloads_and_other_artifacts(
    tmp_path: Path, mosquitto_plain: Broker, retained: RetainedMessages, rig: MqttRig, blob: Blob
) -> None:
    last = N_CHUNKS - 1
    publish_chunks(retained, mosquitto_plain, blob, range(last))
    all_but_one = asyncio.Event()
    download = ModelStore(tmp_path).open_download(blob.artifact)
    task = asyncio.create_task(
        rig.fetcher.fetch(download, lambda have, _n: have == last and all_but_one.set())
    )
    await asyncio.wait_for(all_but_one.wait(), 10)

    # The registry clearing a retained chunk reaches live subscribers as an empty message.
    cleared = rig.subscriber.watch(blob.topic(last), b"")
    retained.publish(mosquitto_plain, blob.topic(last), b"")
    rig.fetcher.feed(make_blob().topic(0), b"a chunk of an artifact nobody fetches")
    rig.fetcher.feed("edge/v1/not/a/chunk", b"x")
    await asyncio.wait_for(cleared.wait(), 10)
    assert not task.done()
    assert download.missing() == [last]

    retained.publish(mosquitto_plain, blob.topic(last), blob.chunk(last))
    assert await asyncio.wait_for(task, 10) == N_CHUNKS
    assert rig.fetcher.chunks_received == N_CHUNKS


async def test_mqtt_a_silent_broker_is_not_asked_again_and_the_download_stalls(
    tmp_path: Path, mosquitto_plain: Broker, blob: Blob
) -> None:
    rig = await mqtt_rig(mosquitto_plain, window=4, stall_timeout_s=0.5)
    download = ModelStore(tmp_path).open_download(blob.artifact)
    try:
        with pytest.raises(DownloadStalledError, match="0 of 12 chunks"):
            await rig.fetcher.fetch(download)
    finally:
        rig.subscriber.close()

    first = [blob.topic(i) for i in range(4)]
    # A second SUBSCRIBE on the same connection would only bring retained copies again.
    assert rig.subscriber.subscribed == [first]
    assert rig.subscriber.unsubscribed == [first]


async def test_mqtt_time_without_a_connection_does_not_count_toward_the_stall(
    tmp_path: Path, mosquitto_plain: Broker, retained: RetainedMessages, blob: Blob
) -> None:
    clock = FakeClock()
    link = LinkState(clock=clock)
    rig = await mqtt_rig(mosquitto_plain, window=4, stall_timeout_s=60, link=link)
    download = ModelStore(tmp_path).open_download(blob.artifact)
    task = asyncio.create_task(rig.fetcher.fetch(download))
    try:
        await eventually(lambda: len(rig.subscriber.subscribed) == 1, "the fetcher")
        clock.now += 59
        link.disconnected()
        clock.now += 3600  # an hour offline
        link.connected(session_present=True)
        publish_chunks(retained, mosquitto_plain, blob, range(N_CHUNKS))
        assert await asyncio.wait_for(task, 10) == N_CHUNKS
    finally:
        rig.subscriber.close()


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
