"""A chunk fetcher wired to a real broker through the agent's own subscriber, and what the
MQTT fetch tests publish and inspect with it."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from paho.mqtt.enums import MQTTErrorCode

from edge_agent.update.fetch import MqttChunkFetcher
from tests.agent.blobs import TOPICS, Blob
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


def publish_chunks(
    retained: RetainedMessages, broker: Broker, blob: Blob, indices: Sequence[int]
) -> None:
    """Publish chunks as the registry does: retained, QoS 1, one topic per chunk."""
    for index in indices:
        retained.publish(broker, blob.topic(index), blob.chunk(index))


def flat(calls: list[list[str]]) -> list[str]:
    return [topic for call in calls for topic in call]
