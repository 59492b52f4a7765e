"""The registry's MQTT connection: paho-mqtt on its own thread, awaitable from asyncio.

Paho runs its network loop in a thread and reconnects by itself; its callbacks only hand work to
the event loop with `call_soon_threadsafe`, never block and never take locks of ours (paho calls
`on_publish` while holding its own locks, so any lock here could deadlock with `publish`).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from edge_common import tls_hints
from edge_common.broker_address import BrokerAddress, BrokerURLError
from model_registry.errors import ConfigError, RegistryError

MAX_INFLIGHT = 200  # chunks of one artifact go out together; paho's default of 20 serializes them
log = logging.getLogger(__name__)
_CONNECTION_LOST, _KEEPALIVE_TIMEOUT = 128, 141  # paho's reason codes for a link that dropped


class MqttError(RegistryError):
    """The broker refused us or could not be reached in time."""


@dataclass(frozen=True)
class MqttMessage:
    """A received message, converted from paho's type at the boundary."""

    topic: str
    payload: bytes
    retain: bool


class MqttConnection:
    """One persistent-session MQTT client with awaitable QoS 1 publishes."""

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
        self._connect_timeout_s = connect_timeout_s
        self._keepalive = keepalive_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connected: asyncio.Event | None = None
        self._first_connect: asyncio.Future[None] | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._subscriptions: list[str] = []
        self._asked: dict[int, str] = {}  # subscriptions awaiting the broker's answer, by mid
        self._routes: dict[str, Callable[[MqttMessage], None]] = {}
        self._connections = 0
        self.since: datetime | None = None  # when the connection last came up or went down
        self._closing = False
        self.reconnected: asyncio.Queue[int] = asyncio.Queue()  # one item per reconnection
        # Where received messages go; the registry passes its ingest's bounded, gated queue.
        self.messages: asyncio.Queue[MqttMessage] = (
            asyncio.Queue() if messages is None else messages
        )
        self._client = self._make_client(client_id, username, password, ca_file, clean_session)

    def _make_client(
        self,
        client_id: str,
        username: str | None,
        password: str | None,
        ca_file: str | None,
        clean_session: bool,
    ) -> paho.Client:
        # MQTT 3.1.1, by default with a persistent session: every broker we target speaks it,
        # the embedded one included, and it keeps queued messages across reconnects. The
        # subscriptions are made again after every connect, so a clean session works as well.
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=paho.MQTTv311,
        )
        self._ca_file = ca_file or None
        if username:
            client.username_pw_set(username, password)
        if self.address.tls:
            client.tls_set(ca_certs=ca_file or None, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.max_queued_messages_set(0)  # unbounded: a publish never silently drops
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    async def connect(self) -> None:
        """Connect and start paho's network thread; fail if the broker says no."""
        self._loop = asyncio.get_running_loop()
        self._connected = asyncio.Event()
        self._first_connect = self._loop.create_future()
        # The first TCP connect and TLS handshake block in a thread, so their errors reach us;
        # paho's own thread only says that a connection failed, not why.
        await self._open_socket()
        self._client.loop_start()
        try:
            await asyncio.wait_for(asyncio.shield(self._first_connect), self._connect_timeout_s)
        except TimeoutError as e:
            await self.close()
            raise MqttError(
                f"no answer from the broker at {self.address.host}:{self.address.port} "
                f"within {self._connect_timeout_s:.0f} s"
            ) from e
        except MqttError:
            await self.close()
            raise

    async def _open_socket(self) -> None:
        host, port = self.address.host, self.address.port
        try:
            await asyncio.to_thread(self._client.connect, host, port, self._keepalive)
        except (OSError, ValueError) as e:  # ssl.SSLError is an OSError
            names = None
            if tls_hints.is_name_mismatch(e):
                names = await asyncio.to_thread(
                    tls_hints.certificate_names, host, port, self._probe_context()
                )
            raise MqttError(tls_hints.unreachable_text(self._where(), host, e, names)) from e

    def _probe_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self._ca_file)

    async def close(self) -> None:
        """Disconnect cleanly and stop the network thread."""
        self._closing = True
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(MqttError("connection closed before the broker acknowledged"))
        self._pending.clear()

    async def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        """Publish at QoS 1 and wait for the broker's acknowledgement (across reconnects)."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise MqttError(f"cannot publish on {topic}: {paho.error_string(info.rc)}")
        future = self._running_loop().create_future()
        self._pending[info.mid] = future
        await future

    def subscribe(self, topic_filter: str) -> None:
        """Subscribe at QoS 1 now and again after every reconnect."""
        self._subscriptions.append(topic_filter)
        self._send_subscribe(topic_filter)

    def _send_subscribe(self, topic_filter: str) -> None:
        _rc, mid = self._client.subscribe(topic_filter, qos=1)
        if mid is not None:
            self._asked[mid] = topic_filter

    def route(self, topic: str, handler: Callable[[MqttMessage], None]) -> None:
        """Hand messages on exactly `topic` to `handler` (on the loop) instead of `messages`."""
        self._routes[topic] = handler

    @property
    def connected(self) -> bool:
        """Whether the connection is up right now."""
        return self._connected is not None and self._connected.is_set()

    async def wait_connected(self) -> None:
        """Return once the connection is up."""
        if self._connected is None:
            raise RuntimeError("connect() first")
        await self._connected.wait()

    # paho callbacks: network thread; hand everything to the loop.

    def _on_connect(self, _c: paho.Client, _u: Any, _f: Any, rc: ReasonCode, _p: Any) -> None:
        self._call(self._connect_result, rc.is_failure, str(rc))

    def _on_disconnect(self, _c: paho.Client, _u: Any, _f: Any, rc: Any, _p: Any) -> None:
        self._call(self._mark_disconnected, _disconnect_reason(rc))

    def _on_publish(self, _c: paho.Client, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        self._call(self._acknowledge, mid)

    def _on_subscribe(
        self, _c: paho.Client, _u: Any, mid: int, codes: list[ReasonCode], _p: Any
    ) -> None:
        self._call(self._subscribed, mid, [str(c) for c in codes if c.is_failure])

    def _on_message(self, _c: paho.Client, _u: Any, message: paho.MQTTMessage) -> None:
        converted = MqttMessage(message.topic, bytes(message.payload), bool(message.retain))
        self._call(self._dispatch, converted)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("connect() first")
        return self._loop

    def _call(self, callback: Any, *args: Any) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(callback, *args)

    # loop side

    def _connect_result(self, failed: bool, reason: str) -> None:
        if self._first_connect is None or self._connected is None:
            return  # a callback from a connection that close() already abandoned
        if failed:
            if not self._first_connect.done():
                self._first_connect.set_exception(MqttError(f"broker refused us: {reason}"))
            return
        for topic_filter in self._subscriptions:
            self._send_subscribe(topic_filter)
        self._connected.set()
        self._connections += 1
        if self._connections > 1:
            down = (_now() - self.since).total_seconds() if self.since is not None else 0.0
            log.info("connected to the broker at %s again after %.0f s", self._where(), down)
            self.reconnected.put_nowait(self._connections)
        self.since = _now()
        if not self._first_connect.done():
            self._first_connect.set_result(None)

    def _subscribed(self, mid: int, refused: list[str]) -> None:
        topic_filter = self._asked.pop(mid, None)
        if refused and topic_filter is not None:
            # Nothing arrives on a refused subscription: say so rather than wait in silence.
            log.error(
                "the broker at %s refused the subscription to %s (%s): do its access rules "
                "predate this registry? (model-registry broker-config writes current ones)",
                self._where(),
                topic_filter,
                ", ".join(refused),
            )

    def _dispatch(self, message: MqttMessage) -> None:
        handler = self._routes.get(message.topic)
        if handler is None:
            self.messages.put_nowait(message)
        else:
            handler(message)

    def _mark_disconnected(self, reason: str) -> None:
        if self._first_connect is not None and not self._first_connect.done():
            hint = "" if self.address.tls else tls_hints.PLAIN_TO_TLS_HINT
            self._first_connect.set_exception(
                MqttError(
                    f"the broker at {self._where()} closed the connection before accepting it{hint}"
                )
            )
            return
        if self._connected is None or not self._connected.is_set():
            return  # said once per lost connection, not once per failed attempt to reconnect
        self._connected.clear()
        self.since = _now()
        if not self._closing:
            log.warning(
                "lost the connection to the broker at %s (%s); reconnecting. Until it is back, "
                "devices cannot report and their states are as last received",
                self._where(),
                reason,
            )

    def _where(self) -> str:
        host = f"[{self.address.host}]" if ":" in self.address.host else self.address.host
        return f"{host}:{self.address.port}"

    def _acknowledge(self, mid: int) -> None:
        future = self._pending.pop(mid, None)
        if future is not None and not future.done():
            future.set_result(None)


def _disconnect_reason(rc: Any) -> str:
    """Paho's reason code in words; it says "Unspecified error" for a connection that dropped."""
    value = getattr(rc, "value", None)
    if value == _CONNECTION_LOST:
        return "the broker closed the connection or the network dropped it"
    if value == _KEEPALIVE_TIMEOUT:
        return "the broker stopped answering within the keep-alive"
    return str(rc)


def _now() -> datetime:
    return datetime.now(UTC)
