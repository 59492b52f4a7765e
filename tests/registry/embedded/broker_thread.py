"""The embedded broker on a thread of its own, and the client helpers its tests share."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from edge_protocol.topics import Topics
from model_registry.mqtt.credentials import generate_password, hash_password
from model_registry.mqtt.embedded import EmbeddedBroker
from tests.support.broker import LOCALHOST, MqttTestClient

TOPICS = Topics()
P = TOPICS.prefix
REGISTRY = "registry"
SHA = "cd" * 32
NOT_AUTHORIZED = 0x87  # paho reports MQTT 3.1.1 CONNACK code 5 as this v5 reason code
SUBSCRIBE_REFUSED = 0x80
DEADLINE = 10.0  # seconds; happy paths take milliseconds


class BrokerThread:
    """An EmbeddedBroker on its own event loop thread, so blocking paho clients can use it."""

    def __init__(self, **options: Any) -> None:
        self.passwords: dict[str, str] = {}  # username -> stored hash
        self.options = options
        self.broker: EmbeddedBroker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    def start(self) -> BrokerThread:
        """Start the thread and wait until the broker listens (or raise why it did not)."""
        self._thread.start()
        if not self._ready.wait(DEADLINE):
            raise TimeoutError("the embedded broker did not start")
        if self._error is not None:
            raise self._error
        return self

    def stop(self) -> None:
        """Stop the broker and its loop."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(DEADLINE)

    @property
    def port(self) -> int:
        assert self.broker is not None
        return self.broker.port

    def add_user(self, username: str | None = None) -> tuple[str, str]:
        """Provision a user (a fresh device id by default); return (username, password)."""
        username = username or f"dev-{uuid.uuid4().hex[:10]}"
        password = generate_password()
        self.passwords[username] = hash_password(password)
        return username, password

    def connect(
        self,
        user: tuple[str, str] | None,
        *,
        client_id: str | None = None,
        clean_session: bool = True,
        will: tuple[str, bytes] | None = None,
    ) -> MqttTestClient:
        """Connect an MQTT 3.1.1 client as `user` ((name, password), None: anonymous)."""
        client = self.paho(user, client_id=client_id, clean_session=clean_session, will=will)
        return MqttTestClient.connect(client, LOCALHOST, self.port, timeout=DEADLINE)

    def paho(
        self,
        user: tuple[str, str] | None,
        *,
        client_id: str | None = None,
        clean_session: bool = True,
        will: tuple[str, bytes] | None = None,
    ) -> mqtt.Client:
        """An unconnected paho client with credentials and a retained QoS 1 will.

        `client_id` defaults to a device's own id, as the agent uses, and to a broker-assigned
        one for the registry and anonymous clients.
        """
        if client_id is None:
            client_id = user[0] if user is not None and user[0] != REGISTRY else ""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        if user is not None:
            client.username_pw_set(*user)
        if will is not None:
            client.will_set(will[0], will[1], qos=1, retain=True)
        return client

    async def _lookup(self, username: str) -> str | None:
        # A coroutine function, like the registry's (which reads its storage).
        return self.passwords.get(username)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        options = {"password_lookup": self._lookup, **self.options}
        self.broker = EmbeddedBroker(LOCALHOST, 0, topics=TOPICS, registry_user=REGISTRY, **options)
        try:
            await self.broker.start()
        except Exception as e:  # noqa: BLE001 (handed to the thread waiting in start())
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.broker.stop()


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` until it holds, failing after DEADLINE seconds."""
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {DEADLINE:.0f}s")
        time.sleep(0.02)


def connect_by_hand(client: mqtt.Client, port: int, keepalive: int = 30) -> None:
    """Connect without a network thread: nothing pings or reconnects behind the test's back."""
    client.connect(LOCALHOST, port, keepalive=keepalive)
    wait_until(lambda: client.loop(0.05) == 0 and client.is_connected(), "CONNACK")


def drop(client: mqtt.Client) -> None:
    """Close the client's socket without DISCONNECT, as a crash or a cut cable would."""
    sock = client.socket()
    assert sock is not None
    sock.close()


def codes(reason_codes: list[Any]) -> list[int]:
    return [code.value for code in reason_codes]


def drain_until(client: MqttTestClient, barrier: str) -> list[mqtt.MQTTMessage]:
    """Messages received up to and including the first on `barrier`, which is excluded."""
    return client.collect_until(barrier, DEADLINE)[:-1]


class SessionAwareClient(MqttTestClient):
    """A test client that remembers the CONNACK's session-present flag."""

    session_present: bool | None = None

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        self.session_present = flags.session_present
        super()._on_connect(client, userdata, flags, reason_code, properties)


def drain_retained(client: MqttTestClient) -> None:
    """Forget the retained messages a wide subscription replayed (other tests' leftovers)."""
    barrier = f"{P}/barrier/{uuid.uuid4().hex}"
    client.publish(barrier, b"barrier")
    drain_until(client, barrier)
