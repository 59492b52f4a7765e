"""A broker double for the agent, in process: retained messages, subscriptions, one session.

It implements the agent's own broker interfaces, nothing of MQTT's wire: `follow` has the
signature of `edge_agent.mqtt.run_with_reconnect` (what `Agent` connects with), and the
connection it hands to `on_connect` has `AgentMqtt`'s `subscribe`, `unsubscribe`, `publish` and
`session_present`. Messages are delivered one at a time on the `follow` task, in order, as the
real loop does; subscribing to a filter brings every retained message it matches, again on every
subscription, as a broker does. The test drops and restores the link at will.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from paho.mqtt.client import topic_matches_sub

from edge_agent.errors import BrokerError, MqttDisconnectedError
from edge_agent.mqtt import Message

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    """One message the agent published."""

    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        """The payload as JSON."""
        return json.loads(self.payload)


class SimConnection:
    """One connection of the agent to the broker double (AgentMqtt's surface)."""

    def __init__(self, broker: SimBroker, *, session_present: bool) -> None:
        self._broker = broker
        self.session_present = session_present
        self.lost = False
        self.inbox: asyncio.Queue[Message | None] = asyncio.Queue()

    @property
    def connected(self) -> bool:
        """Whether this connection is still up."""
        return not self.lost

    async def subscribe(self, *topic_filters: str) -> None:
        """Subscribe; every retained message a filter matches is delivered (again)."""
        self._check()
        for topic_filter in topic_filters:
            self._broker.subscriptions.add(topic_filter)
            self._broker.subscribe_count += 1
            for topic, payload in sorted(self._broker.retained.items()):
                if topic_matches_sub(topic_filter, topic):
                    self.inbox.put_nowait(Message(topic, payload, retain=True))

    async def unsubscribe(self, *topic_filters: str) -> None:
        """Stop receiving what these filters match."""
        self._check()
        self._broker.subscriptions.difference_update(topic_filters)

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Take one message of the agent (acknowledged at once)."""
        self._check()
        self._broker.take(Published(topic, payload, retain))

    def _check(self) -> None:
        if self.lost:
            raise MqttDisconnectedError("the connection to the broker double is down")


@dataclass
class SimBroker:
    """Retained topics, the device's subscriptions, and what the device published."""

    retained: dict[str, bytes] = field(default_factory=dict)
    subscriptions: set[str] = field(default_factory=set)
    published: list[Published] = field(default_factory=list)
    subscribe_count: int = 0
    handled: int = 0  # messages the agent has finished handling
    handling: bool = False  # a message is being handled now
    listeners: list[Callable[[Published], None]] = field(default_factory=list)  # device's
    connection: SimConnection | None = None
    up: bool = True
    _link_changed: asyncio.Event = field(default_factory=asyncio.Event)
    _keep_session: bool = False

    # --- the registry's side ----------------------------------------------------------------

    def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        """Publish to the device (retained unless told otherwise); empty clears the topic."""
        if retain:
            if payload:
                self.retained[topic] = payload
            else:
                self.retained.pop(topic, None)
        connection = self.connection
        wanted = any(topic_matches_sub(f, topic) for f in self.subscriptions)
        if connection is not None and not connection.lost and wanted:
            connection.inbox.put_nowait(Message(topic, payload, retain=False))

    def take(self, message: Published) -> None:
        """A message from the device."""
        self.published.append(message)
        for listener in self.listeners:
            listener(message)
        if message.retain:
            self.retained[message.topic] = message.payload

    # --- the link ----------------------------------------------------------------------------

    def drop(self) -> None:
        """Cut the link (what a network failure does): the agent hears it and waits."""
        self.up = False
        if self.connection is not None:
            self.connection.lost = True
            self.connection.inbox.put_nowait(None)
        self._signal()

    def restore(self, *, session_present: bool = False) -> None:
        """Let the agent connect again; without the session the subscriptions are gone."""
        self._keep_session = session_present
        self.up = True
        self._signal()

    def _signal(self) -> None:
        self._link_changed.set()
        self._link_changed = asyncio.Event()

    async def follow(
        self,
        settings: Any,
        *,
        client_id: str,
        will: tuple[str, bytes] | None,
        on_connect: Callable[[Any], Awaitable[None]],
        on_message: Callable[[Message], Awaitable[None]],
        backoff: Any,
        on_disconnect: Callable[[Exception], None] | None = None,
        on_handler_error: Callable[[Message, Exception], Awaitable[None]] | None = None,
    ) -> None:
        """`run_with_reconnect` against the double: connect whenever the link is up."""
        while True:
            while not self.up:
                await self._link_changed.wait()
            if not self._keep_session:
                self.subscriptions.clear()
            connection = SimConnection(self, session_present=self._keep_session)
            self._keep_session = True  # a reconnect the test did not ask for keeps it
            self.connection = connection
            error = await self._serve(connection, on_connect, on_message, on_handler_error)
            if on_disconnect is not None:
                on_disconnect(error)
            if will is not None and self.up:  # a connection that ended unasked: the will
                self.take(Published(will[0], will[1], retain=True))

    async def _serve(
        self,
        connection: SimConnection,
        on_connect: Callable[[Any], Awaitable[None]],
        on_message: Callable[[Message], Awaitable[None]],
        on_handler_error: Callable[[Message, Exception], Awaitable[None]] | None,
    ) -> Exception:
        try:
            await on_connect(connection)
            while (message := await connection.inbox.get()) is not None:
                self.handling = True
                try:
                    await on_message(message)
                except BrokerError:
                    raise
                except Exception as e:  # the real loop reports it and goes on
                    log.exception("handling %s failed", message.topic)
                    if on_handler_error is not None:
                        await on_handler_error(message, e)
                finally:
                    self.handling = False
                self.handled += 1
        except BrokerError as e:
            return e
        return MqttDisconnectedError("the broker double's link was cut")

    def idle(self) -> bool:
        """Whether every message sent to the current connection has been handled."""
        connection = self.connection
        up = connection is not None and not connection.lost
        return up and connection.inbox.empty() and not self.handling

    # --- what the device said ----------------------------------------------------------------

    def messages(self, topic: str) -> list[Any]:
        """The JSON bodies the device published on `topic`, oldest first."""
        return [m.json() for m in self.published if m.topic == topic]
