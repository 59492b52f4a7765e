"""amqtt 0.12's per-connection protocol handler, fixed for keep-alive, QoS 1, redelivery, leaving.

Written against amqtt 0.12.1, like `_amqtt_broker`; each override names the bug it fixes.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from amqtt.mqtt.protocol.broker_handler import BrokerProtocolHandler
from amqtt.session import OUTGOING

logger = logging.getLogger(__name__)

PUBACK_TIMEOUT_S = 5.0  # amqtt's own value; a client that never acks is not waited for longer
DRAIN_TIMEOUT_S = 10.0  # the broker routes a queued message in microseconds
_DRAIN_POLL_S = 0.005
_INTERNALS = (
    "handle_read_timeout", "handle_connection_closed", "handle_disconnect", "start",
    "mqtt_publish", "_retry_deliveries", "_handle_qos1_message_flow", "_handle_message_flow",
    "_send_packet",
)  # fmt: skip


def missing_handler_internals() -> list[str]:
    """Names the fixes below override or call that this amqtt's handler lacks."""
    return [name for name in _INTERNALS if not hasattr(BrokerProtocolHandler, name)]


class EdgeProtocolHandler(BrokerProtocolHandler):  # type: ignore[misc]
    """The broker's side of one client connection."""

    _keepalive_expiry: asyncio.Future[None] | None = None
    _redelivery: asyncio.Future[list[Any]] | None = None

    def handle_read_timeout(self) -> None:
        """End the connection as if the socket had closed, so the will is published."""
        # amqtt 0.12's broker handler ignored the read timeout: a device that lost power
        # without closing TCP stayed connected for ever and its will never went out.
        if self._keepalive_expiry is None:
            self._keepalive_expiry = asyncio.ensure_future(self.handle_connection_closed())

    async def handle_disconnect(self, disconnect: Any) -> None:
        """Tell the broker the client left only once it has routed what the client sent."""
        # amqtt 0.12 acknowledges a QoS 1 PUBLISH when it queues it for the broker, and the
        # broker stops taking from that queue when the client disconnects: a client that
        # published and left at once lost messages it had been told were delivered.
        if self.session is not None:
            await _drained(self.session)
        await super().handle_disconnect(disconnect)

    async def start(self) -> None:
        """Start reading, after scheduling what the session owes: in-flight, then queued."""
        # Tasks created before the first await run before any live delivery created later,
        # so a resumed session gets its backlog first and in order. amqtt 0.12 sent it after
        # start() had yielded, and messages published meanwhile overtook it.
        session = self.session
        owed = [self._handle_message_flow(message) for message in _in_flight(session)]
        while not session.retained_messages.empty():
            queued = session.retained_messages.get_nowait()
            # Retain flag 0: these match an established subscription (MQTT-3.3.1-9).
            owed.append(self.mqtt_publish(queued.topic, queued.data, queued.qos, retain=False))
        if owed:
            self._redelivery = asyncio.gather(*owed, return_exceptions=True)
            self._redelivery.add_done_callback(_log_failures(session.client_id))
        await super().start()

    async def _retry_deliveries(self) -> None:
        """Done by `start` instead, without blocking it until every ack is in (amqtt: 10 s)."""

    async def _handle_qos1_message_flow(self, app_message: Any) -> None:
        """Send a QoS 1 PUBLISH and wait for its PUBACK, the waiter registered first."""
        if app_message.direction != OUTGOING or self.session is None:
            await super()._handle_qos1_message_flow(app_message)
            return
        # amqtt 0.12 registered the waiter after sending: a fast PUBACK found none ("unknown
        # pending message") and the sender waited 5 s for an ack that had already come.
        packet_id, inflight = app_message.packet_id, self.session.inflight_out
        inflight[packet_id] = app_message
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._puback_waiters[packet_id] = waiter
        try:
            packet = app_message.build_publish_packet(dup=app_message.publish_packet is not None)
            await self._send_packet(packet)
            app_message.publish_packet = packet
            app_message.puback_packet = await asyncio.wait_for(waiter, PUBACK_TIMEOUT_S)
        except asyncio.CancelledError:
            # The connection is closing: the message stays in flight and a resumed session
            # gets it again (MQTT-4.4.0-1). amqtt 0.12 dropped it.
            raise
        except BaseException:
            inflight.pop(packet_id, None)
            raise
        else:
            inflight.pop(packet_id, None)
        finally:
            self._puback_waiters.pop(packet_id, None)


async def _drained(session: Any) -> None:
    """Wait until the broker took every message of `session` from its queue (or time is up)."""
    queue = session.delivered_message_queue
    deadline = asyncio.get_running_loop().time() + DRAIN_TIMEOUT_S
    # Polled: amqtt's queue signals nothing, and it is empty at almost every disconnect.
    while not queue.empty() and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(_DRAIN_POLL_S)
    if not queue.empty():
        logger.warning("%d messages of %s were not routed", queue.qsize(), session.client_id)


def _in_flight(session: Any) -> list[Any]:
    """Messages sent or received but not yet acknowledged, oldest first."""
    return [*session.inflight_in.values(), *session.inflight_out.values()]


def _log_failures(client_id: str) -> Any:
    def log(done: asyncio.Future[list[Any]]) -> None:
        if done.cancelled():
            return
        failures = [r for r in done.result() if isinstance(r, BaseException)]
        if failures:
            logger.info("%d redeliveries to %s did not complete, first: %r",
                        len(failures), client_id, failures[0])  # fmt: skip

    return log
