"""What the agent tells the registry: its retained `state` and its lifecycle `events`.

Reports are produced whether or not the broker is reachable. While it is not, they wait in a
bounded queue in memory and go out in order on the next connection; the state is always
republished in full on connect, so only events can be lost, and only beyond the bound.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from edge_agent import __version__
from edge_agent.errors import AgentError
from edge_protocol import Topics
from edge_protocol.topics import event_payload, offline_payload, state_payload

log = logging.getLogger(__name__)
MAX_PENDING_EVENTS = 1000


class Publisher(Protocol):
    """The one thing reporting needs from a broker connection."""

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the acknowledgement."""


class Reporter:
    """Publishes state and events when connected, queues events when not."""

    def __init__(
        self,
        device_id: str,
        topics: Topics,
        describe: Callable[[], tuple[dict[str, Any], dict[str, Any]]],
    ) -> None:
        self._device_id = device_id
        self._topics = topics
        self._describe = describe  # returns (models, trust) for the state message
        self._client: Publisher | None = None
        self._pending: deque[bytes] = deque(maxlen=MAX_PENDING_EVENTS)
        self.dropped_events = 0

    @property
    def offline_will(self) -> tuple[str, bytes]:
        """The will the broker publishes if the device vanishes."""
        return self._topics.state(self._device_id), offline_payload(self._device_id)

    async def connected(self, client: Publisher) -> None:
        """Use a new connection: publish the full state, then the events that waited."""
        self._client = client
        await self.publish_state()
        while self._pending and self._client is client:
            payload = self._pending[0]
            await client.publish(self._topics.events(self._device_id), payload)
            self._pending.popleft()

    def disconnected(self) -> None:
        """Stop using the connection that was lost."""
        self._client = None

    async def publish_state(self) -> None:
        """Publish the retained state message (or do nothing while offline)."""
        models, trust = self._describe()
        payload = state_payload(
            self._device_id, agent_version=__version__, models=models, trust=trust
        )
        await self._send(self._topics.state(self._device_id), payload, retain=True)

    async def publish_offline(self) -> None:
        """Say goodbye before a clean disconnect (the broker sends no will for those)."""
        await self._send(self.offline_will[0], self.offline_will[1], retain=True)

    async def event(
        self, kind: str, *, model: str | None = None, version: int | None = None, **details: Any
    ) -> None:
        """Report one update lifecycle event."""
        log.info("event %s model=%s version=%s %s", kind, model, version, details or "")
        payload = event_payload(self._device_id, kind, model=model, version=version, **details)
        if self._client is None:
            self._queue(payload)
            return
        await self._send(self._topics.events(self._device_id), payload, retain=False)

    async def _send(self, topic: str, payload: bytes, *, retain: bool) -> None:
        client = self._client
        if client is None:
            return
        try:
            await client.publish(topic, payload, retain=retain)
        except AgentError as e:  # the connection dropped under us: keep events for later
            log.info("could not publish on %s: %s", topic, e)
            if not retain:
                self._queue(payload)

    def _queue(self, payload: bytes) -> None:
        if len(self._pending) == self._pending.maxlen:
            self.dropped_events += 1
        self._pending.append(payload)
