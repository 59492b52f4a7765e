"""amqtt 0.12's broker with the fixes the embedded broker needs; each override names its bug.

Written against amqtt 0.12.1. The overrides touch amqtt internals, so `check_amqtt_internals`
fails at start-up if a release renames any of them instead of silently running unfixed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Coroutine, Iterable, Iterator
from typing import Any

from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.errors import AMQTTError, MQTTError, NoDataError
from amqtt.events import BrokerEvents
from amqtt.mqtt.connack import NOT_AUTHORIZED, ConnackPacket
from amqtt.utils import gen_client_id

from model_registry.mqtt._amqtt_handler import EdgeProtocolHandler, missing_handler_internals
from model_registry.mqtt._amqtt_limits import PacketSizeLimit
from model_registry.mqtt._amqtt_plugins import BrokerPolicy
from model_registry.mqtt.limits import MAX_PACKET_BYTES

logger = logging.getLogger(__name__)

KEEPALIVE_GRACE = 1.5  # MQTT-3.1.2-24: disconnect after one and a half keep-alive periods
SUBSCRIBE_FAILURE = 0x80
TAKEOVER_TIMEOUT_S = 5.0  # the old connection's teardown takes milliseconds
_AUTHENTICATED = "model_registry.authenticated"  # Session.attributes key set once per CONNECT
_BROKER_INTERNALS = (
    "_client_connected", "_initialize_client_session", "_handle_client_session", "_authenticate",
    "_handle_subscription", "_publish_retained_messages_for_subscription",
    "_publish_session_retained_messages", "_topic_filtering", "_matches", "_get_handler",
    "_delete_session", "_stop_handler", "add_subscription", "retain_message",
)  # fmt: skip


_INSTANCE_INTERNALS = ("_sessions", "_retained_messages", "_servers")


def check_amqtt_internals(broker: Any | None = None) -> None:
    """Fail if this amqtt lacks an internal the fixes override or use (`broker`: instance too)."""
    missing = [name for name in _BROKER_INTERNALS if not hasattr(Broker, name)]
    missing += [f"BrokerProtocolHandler.{name}" for name in missing_handler_internals()]
    if broker is not None:
        missing += [name for name in _INSTANCE_INTERNALS if not hasattr(broker, name)]
    if missing:
        raise RuntimeError(
            f"this amqtt lacks {', '.join(missing)}; the embedded broker is written for amqtt 0.12"
        )


class EdgeBroker(Broker):  # type: ignore[misc]
    """amqtt's Broker with authentication first, ACL-checked retained delivery and keep-alive."""

    _subscriptions: dict[str, Any]  # amqtt's table: topic filter -> [(session, qos)]

    def __init__(
        self, config: dict[str, Any], policy: BrokerPolicy, max_packet_bytes: int = MAX_PACKET_BYTES
    ) -> None:
        check_amqtt_internals()
        super().__init__(config)
        self._policy = policy
        self._max_packet_bytes = max_packet_bytes
        check_amqtt_internals(self)
        # amqtt awaits inside loops over its subscription table; a client subscribing meanwhile
        # ("dictionary changed size during iteration") would drop that broadcast for everyone.
        self._subscriptions = _SnapshotDict(self._subscriptions)

    async def _client_connected(self, listener_name: str, reader: Any, writer: Any) -> None:
        """Serve one connection, every packet of it (CONNECT included) under the size limit."""
        host, port = writer.get_peer_info() or ("?", 0)
        limited = PacketSizeLimit(reader, self._max_packet_bytes, f"{host}:{port}")
        await super()._client_connected(listener_name, limited, writer)

    async def _initialize_client_session(
        self, reader: Any, writer: Any, remote_address: str, remote_port: int
    ) -> tuple[Any, Any]:
        """Read CONNECT and authenticate it before any existing session is touched."""
        peer = f"{remote_address}:{remote_port}"
        try:
            handler, incoming = await EdgeProtocolHandler.init_from_connect(
                reader, writer, self.plugins_manager
            )
        except (AMQTTError, MQTTError, NoDataError):
            await _hang_up(writer)
            raise
        # amqtt 0.12 deletes or takes over the session of the CONNECT's client id before it
        # checks the password: anyone could wipe a device's session or disconnect it.
        if not await super()._authenticate(incoming, None):
            await _hang_up(writer, ConnackPacket.build(0, NOT_AUTHORIZED))
            raise MQTTError(f"{peer} refused: bad credentials")
        # A device that may log in must still not take over a session that is not its own.
        if not self._policy.may_use_client_id(incoming.username, incoming.client_id):
            await _hang_up(writer, ConnackPacket.build(0, NOT_AUTHORIZED))
            raise MQTTError(f"{peer} refused: {incoming.username!r} may not use that client id")
        session = await self._create_or_resume(incoming)
        session.attributes[_AUTHENTICATED] = True
        if session.keep_alive > 0:
            session.keep_alive = math.ceil(session.keep_alive * KEEPALIVE_GRACE)
        return handler, session

    async def _authenticate(self, session: Any, listener: Any) -> bool:
        """The verdict of `_initialize_client_session`, which already checked this CONNECT."""
        return bool(session.attributes.pop(_AUTHENTICATED, False))

    async def _create_or_resume(self, incoming: Any) -> Any:
        """The session of an authenticated CONNECT; resumed only for the same client id and user."""
        client_id = incoming.client_id
        existing, old_handler = (
            self._sessions.get(client_id, (None, None)) if client_id else (None, None)
        )
        if existing is not None and existing.transitions.is_connected():
            await self._take_over(existing, old_handler)
        if (
            existing is not None
            and existing.username == incoming.username
            and not incoming.clean_session
        ):
            _adopt_connect(existing, incoming)
            existing.parent = 1  # CONNACK "session present"
            return existing
        if existing is not None:
            await self._delete_session(client_id)
        if not client_id:
            incoming.client_id = gen_client_id()
        incoming.parent = 0
        return incoming

    async def disconnect_user(self, username: str) -> int:
        """Close every connection of `username` and forget its sessions; return how many closed."""
        closed = 0
        for client_id, (session, handler) in list(self._sessions.items()):
            if session.username != username:
                continue
            if handler is not None and session.transitions.is_connected():
                await self._take_over(session, handler)
                closed += 1
            await self._delete_session(client_id)
        return closed

    async def _take_over(self, session: Any, handler: Any) -> None:
        """Close the connection still using `session` and wait until amqtt has let go of it."""
        # MQTT-3.1.4-2. amqtt 0.12 does this after picking the session, and the old connection's
        # teardown then marks the shared session disconnected under the new connection, whose
        # messages were queued instead of sent. The old connection also left with the new will.
        await self._stop_handler(handler)
        deadline = asyncio.get_running_loop().time() + TAKEOVER_TIMEOUT_S
        while session.transitions.is_connected():
            if asyncio.get_running_loop().time() > deadline:
                logger.warning("client %s did not let go of its session", session.client_id)
                return
            await asyncio.sleep(0.01)

    async def _handle_subscription(self, session: Any, handler: Any, waiter: Any) -> None:
        """Acknowledge a SUBSCRIBE, then send the matching retained messages the client may read."""
        request = waiter.result()
        codes = [await self.add_subscription(sub, session) for sub in request.topics]
        await handler.mqtt_acknowledge_subscription(request.packet_id, codes)
        for (topic_filter, _), code in zip(request.topics, codes, strict=True):
            if code == SUBSCRIBE_FAILURE:
                continue
            await self.plugins_manager.fire_event(
                BrokerEvents.CLIENT_SUBSCRIBED,
                client_id=session.client_id,
                topic=topic_filter,
                qos=code,
            )
            await self._send_retained(session, handler, topic_filter, code)

    async def _send_retained(
        self, session: Any, handler: Any, topic_filter: str, granted_qos: int
    ) -> None:
        """Send the retained messages matching a new subscription, each checked for delivery."""
        # amqtt 0.12 skips the receive check for retained messages; a snapshot, because the
        # dict may change while we await.
        sends = []
        for topic, message in list(self._retained_messages.items()):
            if not self._matches(topic, topic_filter):
                continue
            if await self._topic_filtering(session, topic=topic, action=Action.RECEIVE):
                qos = granted_qos if message.qos is None else min(granted_qos, message.qos)
                sends.append(handler.mqtt_publish(topic, message.data, qos, retain=True))
        await _deliver(sends, session.client_id)

    async def _publish_retained_messages_for_subscription(
        self, subscription: tuple[str, int], session: Any
    ) -> None:
        """Disabled: amqtt 0.12 calls it on every CONNECT for every filter any client holds.

        That sent other clients' retained messages to whoever connected (bypassing the ACL)
        and crashed on a subscription added meanwhile. Retained messages go out on SUBSCRIBE
        only (`_send_retained`), as in mosquitto and MQTT 3.1.1 section 3.3.1.3.
        """

    async def retain_message(
        self, source_session: Any, topic_name: str | None, data: Any, qos: int | None = None
    ) -> None:
        """Keep a retained message only where the protocol retains one (`acl.may_retain`)."""
        # amqtt 0.12 retains whatever a client may publish: a device could park a message on
        # its events and telemetry topics, which the protocol never retains.
        username = None if source_session is None else source_session.username
        kept = source_session is None or topic_name is None
        if not kept and not self._policy.may_retain(username, topic_name or ""):
            logger.info("not retaining %r from %r: not a retained topic", topic_name, username)
            return
        await super().retain_message(source_session, topic_name, data, qos)

    async def _publish_session_retained_messages(self, session: Any) -> None:
        """Nothing left to do: `EdgeProtocolHandler.start` already sent the offline backlog."""


class _SnapshotDict(dict[str, Any]):
    """A dict whose iteration walks a copy, so awaiting loops over it survive changes."""

    def __iter__(self) -> Iterator[str]:
        return iter(list(super().keys()))

    def items(self) -> Any:
        return list(super().items())


async def _hang_up(writer: Any, last_word: Any = None) -> None:
    """Send `last_word` if given and close; a client that is already gone is no error."""
    with contextlib.suppress(OSError):
        if last_word is not None:
            await last_word.to_stream(writer)
        await writer.close()


def _adopt_connect(session: Any, incoming: Any) -> None:
    """Take the new CONNECT's will, keep-alive and credentials into a resumed session."""
    # amqtt 0.12 forgot will_retain, so a resumed session kept the previous connection's.
    for name in (
        "will_flag", "will_retain", "will_qos", "will_topic", "will_message", "keep_alive",
        "username", "password", "remote_address", "remote_port", "ssl_object",
    ):  # fmt: skip
        setattr(session, name, getattr(incoming, name))


async def _deliver(sends: Iterable[Coroutine[Any, Any, Any]], client_id: str) -> None:
    """Run publishes to one client together; a failed one is logged, not raised."""
    results = await asyncio.gather(*sends, return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        logger.info("%d of %d deliveries to %s failed, first: %r",
                       len(failures), len(results), client_id, failures[0])  # fmt: skip
