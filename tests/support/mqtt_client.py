"""A blocking MQTT test client (paho) with acknowledged publishes and a queue of messages.

Deliberately not the product's adapter: tests use it to see what a broker does to a client
that is not ours (MQTT v5, refused handshakes, retained-message handling).
"""

from __future__ import annotations

import queue
import threading
import time
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from .mosquitto import DEFAULT_TIMEOUT

T = TypeVar("T")


class ConnectRefusedError(RuntimeError):
    """The broker refused CONNECT, or dropped the connection before any CONNACK."""

    def __init__(self, reason_code: ReasonCode) -> None:
        super().__init__(f"MQTT connection refused or dropped during the handshake: {reason_code}")
        self.reason_code = reason_code


class _AckBook(Generic[T]):
    """Thread-safe results of acknowledged packets, keyed by message id."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._results: dict[int, T] = {}

    def record(self, mid: int, result: T) -> None:
        """Store the result for `mid` and wake waiters (called from paho's network thread)."""
        with self._cond:
            self._results[mid] = result
            self._cond.notify_all()

    def wait(self, mid: int, timeout: float, what: str) -> T:
        """Return the result for `mid`, raising TimeoutError if it does not arrive in time."""
        # The ack may arrive before the caller starts waiting, hence the stored results.
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._results, timeout):
                raise TimeoutError(f"no {what} arrived within {timeout:.0f}s")
            return self._results.pop(mid)


class MqttTestClient:
    """A connected paho client with blocking publish/subscribe and a queue of received messages."""

    def __init__(self, client: mqtt.Client, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.paho = client
        self.timeout = timeout
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        # Set when an established connection drops, e.g. because a test stopped the broker.
        self.connection_lost = threading.Event()
        self._connack: _AckBook[ReasonCode] = _AckBook()
        self._subacks: _AckBook[list[ReasonCode]] = _AckBook()
        self._pubacks: _AckBook[ReasonCode] = _AckBook()
        # Only touched from paho's network thread, so it needs no lock.
        self._handshake_over = False
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message

    @classmethod
    def connect(
        cls, client: mqtt.Client, host: str, port: int, *, timeout: float = DEFAULT_TIMEOUT
    ) -> Self:
        """Connect `client`, start its network thread and wait for a successful CONNACK."""
        self = cls(client, timeout)
        # connect() does the TCP and TLS handshakes synchronously, so TLS errors raise here.
        if client.connect(host, port, keepalive=30) == MQTTErrorCode.MQTT_ERR_SUCCESS:
            client.loop_start()
        # Otherwise the link died while CONNECT was sent (e.g. a TLS 1.3 alert) and
        # _on_disconnect has already recorded why; a network thread would only retry.
        try:
            reason = self._connack.wait(0, timeout, "CONNACK")
        except TimeoutError:
            self.close()
            raise
        if reason.is_failure:
            self.close()
            raise ConnectRefusedError(reason)
        return self

    def subscribe(self, topic: str, qos: int = 1, *, retained: bool = True) -> list[ReasonCode]:
        """Subscribe and return the SUBACK reason codes (granted QoS or a failure code).

        `retained=False` (MQTT v5 only) asks the broker not to replay retained messages, so
        only live traffic arrives even if other tests left retained messages behind.
        """
        if retained:
            result, mid = self.paho.subscribe(topic, qos)
        else:
            options = SubscribeOptions(qos=qos, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
            result, mid = self.paho.subscribe(topic, options=options)
        _check(result, f"subscribe to {topic}")
        assert mid is not None
        return self._subacks.wait(mid, self.timeout, "SUBACK")

    def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> ReasonCode:
        """Publish and wait until it is acknowledged (QoS>0) or sent (QoS 0); return the reason."""
        info = self.paho.publish(topic, payload, qos=qos, retain=retain)
        _check(info.rc, f"publish to {topic}")
        return self._pubacks.wait(info.mid, self.timeout, "PUBACK")

    def next_message(self, timeout: float | None = None) -> mqtt.MQTTMessage:
        """Return the next received message, failing the test if none arrives in time."""
        wait = self.timeout if timeout is None else timeout
        try:
            return self.messages.get(timeout=wait)
        except queue.Empty:
            raise AssertionError(f"no MQTT message arrived within {wait:.0f}s") from None

    def collect_until(self, topic: str, timeout: float | None = None) -> list[mqtt.MQTTMessage]:
        """Return all messages up to and including the first one on `topic`.

        Use a message on an allowed topic as a barrier: mosquitto delivers to one client
        in order, so anything that was going to arrive before it has arrived.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        received: list[mqtt.MQTTMessage] = []
        while not received or received[-1].topic != topic:
            received.append(self.next_message(max(0.0, deadline - time.monotonic())))
        return received

    def close(self) -> None:
        """Disconnect and stop the network thread."""
        self.paho.disconnect()
        self.paho.loop_stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # paho network-thread callbacks (CallbackAPIVersion.VERSION2 signatures).

    def _on_connect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._end_handshake(client, reason_code)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        _userdata: Any,
        _flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        if self._handshake_over:
            self.connection_lost.set()
        # Under TLS 1.3 the server rejects a missing client certificate after the client's
        # handshake finished, so that failure shows up here instead of as a CONNACK.
        self._end_handshake(client, reason_code)

    def _end_handshake(self, client: mqtt.Client, reason_code: ReasonCode) -> None:
        """Publish the first CONNACK-or-disconnect outcome to the thread waiting in connect()."""
        if self._handshake_over:
            return
        self._handshake_over = True
        if reason_code.is_failure:
            # Ends paho's network loop instead of letting it sleep and retry bad credentials.
            client.disconnect()
        # CONNACK has no message id; 0 is free because paho never uses it for packets.
        self._connack.record(0, reason_code)

    def _on_subscribe(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        _properties: Properties | None,
    ) -> None:
        self._subacks.record(mid, reason_codes)

    def _on_publish(
        self,
        _client: mqtt.Client,
        _userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        _properties: Properties | None,
    ) -> None:
        self._pubacks.record(mid, reason_code)

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put(message)


def _check(result: MQTTErrorCode, action: str) -> None:
    """Raise if paho could not even queue an operation (e.g. not connected)."""
    if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
        raise RuntimeError(f"{action} failed locally: {mqtt.error_string(result)}")
