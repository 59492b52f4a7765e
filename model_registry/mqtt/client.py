"""The registry's MQTT link: the shared adapter (edge_common/mqtt), kept up by the shared policy.

One `MqttClient` at a time, as on the agent: paho never reconnects by itself; `follow` opens a
fresh connection after a jittered backoff, and each connection is subscribed again to every
filter asked for. A publish waits for the broker's acknowledgement on the connection it went
out on, or is sent again on the next one (QoS 1 allows the duplicate; every retained document
the registry publishes is idempotent). Messages go to the route of their topic, else to
`messages` (the ingest's bounded, gated queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from edge_common.broker_address import BrokerAddress, BrokerURLError
from edge_common.mqtt import (
    Backoff,
    BrokerError,
    BrokerLogin,
    Message,
    MqttClient,
    MqttDisconnectedError,
    MqttSettingsError,
    MqttSubscribeError,
    follow,
)
from edge_common.supervise import watch
from model_registry.errors import ConfigError, RegistryError

MAX_INFLIGHT = 200  # chunks of one artifact go out together; paho's default of 20 serializes them
RECONNECT_MIN_S, RECONNECT_MAX_S = 1.0, 30.0
log = logging.getLogger(__name__)
MqttMessage = Message  # a received message, converted from paho's type at the boundary
CLOSED = "connection closed before the broker acknowledged"


class MqttError(RegistryError):
    """The broker refused us or could not be reached in time."""


class MqttConnection:
    """The registry's persistent link: awaitable QoS 1 publishes across reconnections."""

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        keepalive_s: int = 30,
        connect_timeout_s: float = 30.0,
        clean_session: bool = False,
        messages: asyncio.Queue[MqttMessage] | None = None,
    ) -> None:
        try:
            self.address = BrokerAddress.parse(url)
        except BrokerURLError as e:
            raise ConfigError(str(e)) from None
        # The registry's ca_file also goes into device bundles, whose devices may reach the
        # broker over TLS while the registry itself uses a plain local listener: only an
        # mqtts:// link of the registry uses it.
        self._login = BrokerLogin(
            url, username=username, password=password,
            ca_file=(ca_file or None) if self.address.tls else None, keepalive_s=keepalive_s,
        )  # fmt: skip
        self._client_id = client_id
        self._clean_session = clean_session
        self._connect_timeout_s = connect_timeout_s
        self._client: MqttClient | None = None  # the connection publishes go out on, while up
        self._up = asyncio.Event()  # set while `_client` is, and once closing
        self._was_up = False  # so that a lost connection is told once, not once per attempt
        self._first: asyncio.Future[None] | None = None  # done at the first CONNACK or failure
        self._follower: asyncio.Task[None] | None = None
        self._subscriptions: list[str] = []
        self._subscribing: set[asyncio.Task[None]] = set()
        self._routes: dict[str, Callable[[MqttMessage], None]] = {}
        self._connections = 0
        self.since: datetime | None = None  # when the connection last came up or went down
        self._closing = False
        self.reconnected: asyncio.Queue[int] = asyncio.Queue()  # one item per reconnection
        # Where received messages go; the registry passes its ingest's bounded, gated queue.
        self.messages: asyncio.Queue[MqttMessage] = (
            asyncio.Queue() if messages is None else messages
        )

    def _make_client(self) -> MqttClient:
        # MQTT 3.1.1, by default with a persistent session: every broker we target speaks it,
        # the embedded one included. The subscriptions are made again on every connection,
        # so a clean session works as well.
        return MqttClient(
            self._login, client_id=self._client_id, connect_timeout_s=self._connect_timeout_s,
            clean_session=self._clean_session, max_inflight=MAX_INFLIGHT,
        )  # fmt: skip

    async def connect(self) -> None:
        """Connect, and stay connected until `close`; MqttError if the first attempt fails."""
        try:
            first = self._make_client()  # settings that cannot work fail here, not in the loop
        except MqttSettingsError as e:
            raise ConfigError(str(e)) from None
        made = iter([first])
        self._first = asyncio.get_running_loop().create_future()
        self._follower = asyncio.create_task(
            follow(
                lambda: next(made, None) or self._make_client(),
                where=str(self.address), who=f"{self._client_id} (user {self._login.username})",
                on_connect=self._connected, on_message=self._received,
                backoff=Backoff(RECONNECT_MIN_S, RECONNECT_MAX_S), on_disconnect=self._lost,
            ),
            name="registry broker link",
        )  # fmt: skip
        try:
            await asyncio.shield(self._first)
        except BaseException:
            await self.close()
            raise
        watch(self._follower, long_lived=True)  # without it the registry would hear nothing

    async def close(self) -> None:
        """Disconnect cleanly; publishes still waiting fail with MqttError."""
        self._closing = True
        self._up.set()  # wakes the publishes waiting for a connection: they fail now
        for task in [*self._subscribing, *([self._follower] if self._follower else [])]:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        """Publish at QoS 1 and wait for the broker's acknowledgement (across reconnects)."""
        while True:
            client = await self._current()
            try:
                await client.publish(topic, payload, retain=retain)
                return
            except MqttDisconnectedError:
                if self._closing:
                    raise MqttError(CLOSED) from None
                self._drop(client)  # sent again on the next connection
            except BrokerError as e:
                raise MqttError(str(e)) from e

    def subscribe(self, topic_filter: str) -> None:
        """Subscribe at QoS 1 now and again after every reconnect."""
        self._subscriptions.append(topic_filter)
        if self._client is not None:
            # A task per filter, started in order: the broker answers SUBSCRIBEs in order.
            task = asyncio.create_task(self._subscribe(self._client, topic_filter))
            self._subscribing.add(task)
            task.add_done_callback(self._subscribing.discard)

    def route(self, topic: str, handler: Callable[[MqttMessage], None]) -> None:
        """Hand messages on exactly `topic` to `handler` (on the loop) instead of `messages`."""
        self._routes[topic] = handler

    @property
    def connected(self) -> bool:
        """Whether the connection is up right now."""
        return self._client is not None and self._client.connected

    async def wait_connected(self) -> None:
        """Return once the connection is up."""
        if self._first is None:
            raise RuntimeError("connect() first")
        await self._up.wait()

    # --- the link's callbacks (on the loop, from `follow`) ---------------------------------

    async def _connected(self, client: MqttClient) -> None:
        for topic_filter in self._subscriptions:
            await self._subscribe(client, topic_filter)
        self._client, self._was_up = client, True
        self._up.set()
        self._connections += 1
        if self._connections > 1:
            down = (_now() - self.since).total_seconds() if self.since is not None else 0.0
            log.info("connected to the broker at %s again after %.0f s", self.address, down)
            self.reconnected.put_nowait(self._connections)
        self.since = _now()
        if self._first is not None and not self._first.done():
            self._first.set_result(None)

    async def _subscribe(self, client: MqttClient, topic_filter: str) -> None:
        try:
            await client.subscribe(topic_filter)
        except MqttSubscribeError:
            # Nothing arrives on a refused subscription: say so rather than wait in silence.
            log.error(
                "the broker at %s refused the subscription to %s: do its access rules predate "
                "this registry? (model-registry broker-config writes current ones)",
                self.address,
                topic_filter,
            )
        except MqttDisconnectedError:
            pass  # the next connection subscribes again

    async def _received(self, message: MqttMessage) -> None:
        handler = self._routes.get(message.topic)
        if handler is None:
            self.messages.put_nowait(message)
        else:
            handler(message)

    def _lost(self, error: Exception) -> None:
        if self._first is not None and not self._first.done():
            self._first.set_exception(MqttError(str(error)))
            return
        self._drop(self._client)
        if not self._was_up:
            return  # said once per lost connection, not once per failed attempt to reconnect
        self._was_up = False
        self.since = _now()
        if not self._closing:  # `follow` has logged why, and logs every attempt to reconnect
            log.warning(
                "the registry is not connected to its broker at %s: until it is back, devices "
                "cannot report and their states are as last received",
                self.address,
            )

    def _drop(self, client: MqttClient | None) -> None:
        """Stop using `client`, which has ended: publishes wait for the next connection."""
        if client is not None and self._client is client and not self._closing:
            self._client = None
            self._up.clear()

    async def _current(self) -> MqttClient:
        while True:
            if self._closing:
                raise MqttError(CLOSED)
            if self._client is not None:
                return self._client
            await self._up.wait()


def _now() -> datetime:
    return datetime.now(UTC)
