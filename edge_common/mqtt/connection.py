"""One MQTT connection: paho-mqtt behind an async context manager.

Threads: paho's blocking TCP connect and TLS handshake run in a short-lived worker thread, then
paho's network thread (`loop_start`) does all socket I/O, so large retained chunks are read and
decrypted off the event loop and keep-alive pings go out even while the loop is busy. Paho
callbacks only hand their arguments to the loop with `call_soon_threadsafe`: they never block and
take no lock (paho calls `on_publish` holding its own mutex, which `publish()` also takes).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_common import tls_hints
from edge_common.broker_address import BrokerAddress, BrokerURLError
from edge_common.mqtt.acks import ack_name, within_silence
from edge_common.mqtt.errors import ErrorTypes, MqttSettingsError
from edge_common.mqtt.settings import ConnectionSettings
from edge_common.mqtt.texts import ConnectionTexts
from edge_common.mqtt.tls import survive_callback_errors, tls_context

log = logging.getLogger(__name__)

QOS = 1  # everything in the protocol (docs/protocol.md section 7) is QoS 1
CLOSE_GRACE_S = 5.0  # a clean DISCONNECT takes milliseconds; past this the link is dead: cut it
_SUBACK_FAILURE = 0x80


@dataclass(frozen=True)
class Message:
    """A received message, converted from paho's type at the boundary."""

    topic: str
    payload: bytes
    retain: bool  # set only when the broker replays a retained message on subscribe


@dataclass(frozen=True)
class _Lost:
    """Queued after the last message of a connection that ended."""

    reason: str


class MqttClient:
    """One MQTT 3.1.1 connection (persistent session by default); `async with` connects and closes.

    Not reusable: after it ends, make a new one (the caller owns reconnecting). Every error it
    raises is of the caller's `errors`; `refused_hint` follows the sentence of refused
    credentials (where the caller keeps its password). `max_inflight` raises paho's bound of
    20 unacknowledged publishes, for a caller that sends many at once.

    `ack_timeout_s` bounds each wait for an acknowledgement by the broker's silence (see
    `edge_common.mqtt.acks`); past it the connection is cut, as if lost. None: no bound.
    """

    def __init__(
        self,
        settings: ConnectionSettings,
        *,
        client_id: str,
        will: tuple[str, bytes] | None = None,
        connect_timeout_s: float = 30,
        clean_session: bool = False,
        max_inflight: int | None = None,
        errors: ErrorTypes = ErrorTypes(),  # noqa: B008 - frozen, so one shared default is safe
        refused_hint: str = "",
        ack_timeout_s: float | None = None,
    ) -> None:
        self._errors = errors
        try:
            self._address = BrokerAddress.parse(settings.url, "mqtt.url")
        except BrokerURLError as e:
            raise errors.settings(str(e)) from None
        self._texts = ConnectionTexts(
            self._address, settings.username, has_client_cert=settings.client_cert is not None,
            refused_hint=refused_hint,
        )  # fmt: skip
        self._keepalive_s = settings.keepalive_s
        self._connect_timeout_s = connect_timeout_s
        self._ack_timeout_s = ack_timeout_s
        self._heard_at = 0.0  # loop time of the last packet the broker sent us (messages, acks)
        self._client = self._make_client(settings, client_id, will, clean_session)
        if max_inflight is not None:
            self._client.max_inflight_messages_set(max_inflight)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: asyncio.Future[None] | None = None  # done at CONNACK or failure
        self._pending: dict[int, asyncio.Future[tuple[int, ...]]] = {}  # mid -> ack codes
        # Unbounded: paho's thread must never wait on the consumer (keep-alive would stall).
        self._queue: asyncio.Queue[Message | _Lost] = asyncio.Queue()
        self._gone = asyncio.Event()  # the connection ended (or never came up)
        self._network_started = False
        self._closing = False
        self._connected = False
        self._session_present = False

    def _make_client(
        self,
        settings: ConnectionSettings,
        client_id: str,
        will: tuple[str, bytes] | None,
        clean_session: bool,
    ) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            # Persistent session: QoS 1 messages sent while we were away wait for us.
            clean_session=clean_session,
            # Every broker we target speaks 3.1.1; the embedded amqtt one speaks nothing else.
            protocol=paho.MQTTv311,
            reconnect_on_failure=False,  # the caller's loop reconnects (`follow`)
        )
        client.connect_timeout = self._connect_timeout_s  # bounds the blocking TCP/TLS phase
        survive_callback_errors(client)  # else one raising callback ends paho's thread
        if settings.username:
            client.username_pw_set(settings.username, settings.password)
        self._configure_tls(client, settings)
        if will is not None:
            client.will_set(will[0], will[1], qos=QOS, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_unsubscribe = self._on_acknowledged
        client.on_publish = self._on_acknowledged
        client.on_message = self._on_message
        return client

    def _configure_tls(self, client: paho.Client, settings: ConnectionSettings) -> None:
        self._tls_files = (settings.ca_file, settings.client_cert, settings.client_key)
        if self._address.tls:
            try:
                client.tls_set_context(tls_context(*self._tls_files))
            except MqttSettingsError as e:
                raise self._errors.settings(str(e)) from e
        elif settings.ca_file is not None or settings.client_cert is not None:
            # Otherwise the password would go out in clear text to someone who asked for TLS.
            raise self._errors.settings(
                f"mqtt.url {settings.url!r} must be mqtts:// when TLS files are set"
            )

    # --- the public interface ----------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether the broker accepted us and the connection has not ended since."""
        return self._connected

    @property
    def session_present(self) -> bool:
        """Whether the broker still had our persistent session (subscriptions, queued messages)."""
        return self._session_present

    async def __aenter__(self) -> Self:
        """Connect; raise MqttConnectError if the broker is unreachable or refuses us."""
        if self._loop is not None:
            raise RuntimeError("an MqttClient connects once; make a new one to reconnect")
        self._loop = asyncio.get_running_loop()
        self._opening = self._loop.create_future()
        # The worker reports back through _hand_over; a daemon so that a connect stuck on a
        # silent host (bounded by paho's connect_timeout anyway) never holds up interpreter exit.
        threading.Thread(target=self._open_socket, name="mqtt-connect", daemon=True).start()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                await self._opening
        except TimeoutError as e:  # socket timeouts arrive converted, so this is ours
            await self._shut_down()
            raise self._errors.connect(
                f"no answer from the broker at {self._address} within {self._connect_timeout_s:g} s"
            ) from e
        except BaseException:  # refused, unreachable, or cancelled: CancelledError propagates
            await self._shut_down()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Disconnect cleanly (so the broker discards the will) and stop paho's thread."""
        await self._shut_down()

    async def subscribe(self, *topic_filters: str) -> None:
        """Subscribe at QoS 1 and await the SUBACK; MqttSubscribeError if any filter is refused.

        Retained messages are sent again on every subscribe. mosquitto 2.0 grants filters its
        ACL denies and drops their messages at delivery, so a grant does not prove access.
        """
        result, mid = self._client.subscribe([(f, QOS) for f in topic_filters])
        codes = await self._acknowledged(result, mid, f"subscribe to {', '.join(topic_filters)}")
        # strict=False: a broker answering with fewer codes than filters refused none of them.
        granted = zip(topic_filters, codes, strict=False)
        refused = [f for f, code in granted if code >= _SUBACK_FAILURE]
        if refused:
            error = self._errors.subscribe(
                f"the broker refused the subscription to {', '.join(refused)}"
            )
            error.refused = tuple(refused)
            raise error

    async def unsubscribe(self, *topic_filters: str) -> None:
        """Unsubscribe and await the UNSUBACK."""
        result, mid = self._client.unsubscribe(list(topic_filters))
        await self._acknowledged(result, mid, f"unsubscribe from {', '.join(topic_filters)}")

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and await the PUBACK (MQTT 3.1.1 acks even what the ACL drops)."""
        info = self._client.publish(topic, payload, qos=QOS, retain=retain)
        await self._acknowledged(info.rc, info.mid, f"publish on {topic}")

    async def messages(self) -> AsyncIterator[Message]:
        """Received messages in order; ends by raising MqttDisconnectedError when the link ends."""
        while True:
            item = await self._queue.get()
            if isinstance(item, _Lost):
                self._queue.put_nowait(item)  # so every other or later reader ends too
                raise self._errors.disconnected(item.reason)
            yield item

    # --- loop side -----------------------------------------------------------------------

    async def _acknowledged(
        self, result: MQTTErrorCode, mid: int | None, what: str
    ) -> tuple[int, ...]:
        """Wait for the broker's acknowledgement of packet `mid`; return its reason codes."""
        if self._gone.is_set() or result == MQTTErrorCode.MQTT_ERR_NO_CONN or mid is None:
            raise self._errors.disconnected(f"cannot {what}: not connected to the broker")
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise self._errors.broker(f"cannot {what}: {paho.error_string(result)}")
        future: asyncio.Future[tuple[int, ...]] = self._running_loop().create_future()
        self._pending[mid] = future
        try:
            return await within_silence(future, self._ack_timeout_s, lambda: self._heard_at)
        except TimeoutError:
            text = (
                f"no {ack_name(what)} from the broker at {self._address} to {what} after "
                f"{self._ack_timeout_s:g} s without a word from it; dropping the connection"
            )
        log.warning("MQTT: %s", text)
        self._cut_socket()  # paho's thread sees the loss: the other waits and the stream end
        raise self._errors.ack_timeout(text)

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("use `async with MqttClient(...)` before talking to the broker")
        return self._loop

    def _socket_ready(self, rc: MQTTErrorCode) -> None:
        """The TCP/TLS connect finished: start paho's network thread, or close what nobody wants."""
        if self._opening is None or self._opening.done() or rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            # Abandoned (timeout, cancel) or dropped during the handshake. With no network
            # thread yet, paho writes the DISCONNECT and closes the socket right here.
            self._client.disconnect()
            self._fail_opening(self._texts.dropped())
            return
        self._client.loop_start()
        self._network_started = True

    def _socket_failed(self, error: Exception, names: list[str] | None = None) -> None:
        self._fail_opening(self._texts.unreachable(error, names), cause=error)

    def _connack_arrived(self, reason: ReasonCode, session_present: bool) -> None:
        if reason.is_failure:
            self._fail_opening(self._texts.refused(reason))
        elif self._opening is not None and not self._opening.done():
            self._connected = True
            self._session_present = session_present
            self._opening.set_result(None)

    def _connection_lost(self, reason: str) -> None:
        """Fail everything still waiting on this connection and end the message stream."""
        if self._gone.is_set():
            return
        self._gone.set()
        self._connected = False
        self._fail_opening(self._texts.dropped())
        text = "the connection was closed" if self._closing else self._texts.lost(reason)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(self._errors.disconnected(text))
        self._pending.clear()
        self._queue.put_nowait(_Lost(text))

    def _resolve(self, mid: int, codes: tuple[int, ...]) -> None:
        self._heard_at = self._running_loop().time()
        future = self._pending.pop(mid, None)
        if future is not None and not future.done():  # done: its waiter was cancelled
            future.set_result(codes)

    def _received(self, message: Message) -> None:
        self._heard_at = self._running_loop().time()  # the broker is serving this connection
        self._queue.put_nowait(message)

    def _fail_opening(self, text: str, *, cause: Exception | None = None) -> None:
        if self._opening is not None and not self._opening.done():
            error = self._errors.connect(text)
            error.__cause__ = cause  # as `raise ... from cause` would
            self._opening.set_exception(error)

    async def _shut_down(self) -> None:
        """Send DISCONNECT if we got that far and wait for paho's network thread to end."""
        self._closing = True
        if not self._network_started:
            return  # the connect worker's socket is closed by _socket_ready when it finishes
        self._client.disconnect()
        try:
            async with asyncio.timeout(CLOSE_GRACE_S):
                await self._gone.wait()
        except TimeoutError:
            log.warning("MQTT: no clean disconnect from %s; cutting the connection", self._address)
            self._cut_socket()
        # Returns at once: with reconnects off, paho's thread ends when the connection does.
        await asyncio.to_thread(self._client.loop_stop)

    def _cut_socket(self) -> None:
        """Shut the socket down under paho's thread, which then sees the connection lost."""
        sock = self._client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                # The plain-socket method: SSLSocket.shutdown would drop its SSL object while
                # the network thread may still be reading through it.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)

    # --- worker and paho threads: hand everything to the loop ------------------------------

    def _open_socket(self) -> None:
        """Worker thread: paho's blocking TCP connect and TLS handshake (sends CONNECT too)."""
        host, port = self._address.host, self._address.port
        try:
            rc = self._client.connect(host, port, self._keepalive_s)
        except Exception as e:  # noqa: BLE001 - handed to the task waiting in __aenter__
            # Still on the worker thread: the names a mismatched certificate lists, for the error.
            names = None
            if tls_hints.is_name_mismatch(e):
                context = tls_context(*self._tls_files)  # it loaded once: it loads again
                names = tls_hints.certificate_names(host, port, context)
            self._hand_over(self._socket_failed, e, names)
        else:
            self._hand_over(self._socket_ready, rc)

    def _hand_over(self, callback: Callable[..., object], *args: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            loop.call_soon_threadsafe(callback, *args)

    def _on_connect(
        self,
        _client: paho.Client,
        _userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._hand_over(self._connack_arrived, reason, flags.session_present)

    def _on_disconnect(
        self,
        _client: paho.Client,
        _userdata: Any,
        _flags: paho.DisconnectFlags,
        reason: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._hand_over(self._connection_lost, str(reason))

    def _on_subscribe(
        self, _client: paho.Client, _userdata: Any, mid: int, reasons: list[ReasonCode], *_: Any
    ) -> None:
        self._hand_over(self._resolve, mid, tuple(r.value for r in reasons))

    def _on_acknowledged(self, _client: paho.Client, _userdata: Any, mid: int, *_: Any) -> None:
        """UNSUBACK or PUBACK: nothing in it but the packet id matters to us."""
        self._hand_over(self._resolve, mid, ())

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            converted = Message(message.topic, bytes(message.payload), bool(message.retain))
        except UnicodeDecodeError:
            # Raising here would end paho's thread; brokers reject such topics anyway.
            self._hand_over(log.warning, "MQTT: dropped a message whose topic is not UTF-8")
            return
        self._hand_over(self._received, converted)
