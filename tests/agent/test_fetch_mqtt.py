"""The MQTT chunk fetcher against a real mosquitto broker, on real files: the window, resuming, bad
chunks, and stalls (links that drop or refuse: test_fetch_mqtt_links)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from edge_agent.errors import (
    DownloadStalledError,
)
from edge_agent.mqtt.link import LinkState
from edge_agent.storage.store import ModelStore
from edge_protocol.errors import ChunkHashError, SizeExceededError
from tests.agent.blobs import CHUNK, N_CHUNKS, Blob, make_blob, sha256_of
from tests.agent.conftest import eventually
from tests.agent.mqtt_rig import (
    FakeClock,
    MqttRig,
    flat,
    mqtt_rig,
    publish_chunks,
    received_topics,
)
from tests.support.broker import Broker, RetainedMessages


@pytest.fixture
async def rig(mosquitto_plain: Broker) -> AsyncIterator[MqttRig]:
    made = await mqtt_rig(mosquitto_plain, window=4)
    yield made
    made.subscriber.close()


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
