"""What the agent tells the registry: its retained `state`, lifecycle `events` and `telemetry`.

The state is sent directly: it is retained, republished in full on every connection and on
every change, and the broker's will replaces it when the device vanishes. Events and telemetry
are first written to the on-disk spool (`edge_agent.uplink.spool`), which gives each one its
`msg_seq`; `run` sends them from there in order whenever a connection is up, and each stays on
disk until the registry says it stored it (its `acks` topic, `on_ack`). What the registry has
not acknowledged `ack_timeout_s` after the broker's PUBACK is sent again, the wait doubling
while nothing is acknowledged, and at most ACK_WINDOW messages are out unacknowledged at once,
so a registry that is away costs each device a window of resends, not its whole spool.

Where the registry does not acknowledge, the broker's PUBACK deletes the message as before: on
a connection whose broker refused the `acks` subscription (its access rules predate it), and,
until the registry has acknowledged anything on this spool, for a message PUBACKed
FALLBACK_SENDS times (a registry that predates acks), unless `[telemetry] registry_acks` says
the registry acknowledges (as bundles of `devices add` do). Nothing is lost to an outage, a restart
or a broker that forgets below the spool's cap; docs/telemetry.md says what happens above it
and why a message may arrive twice. A message the spool cannot keep because its disk is full
waits in memory (`edge_agent.uplink.outbox`) instead and goes out with the spooled ones, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from edge_agent import __version__
from edge_agent.errors import AgentError, BrokerError
from edge_agent.uplink.outbox import Outbox
from edge_agent.uplink.spool import KIND_EVENTS, KIND_TELEMETRY, Spool, SpoolRecord
from edge_protocol import Topics
from edge_protocol.errors import MessageFormatError
from edge_protocol.messages import (
    EventKind,
    event_payload,
    offline_payload,
    parse_ack,
    state_payload,
    telemetry_payload,
)

log = logging.getLogger(__name__)
SEND_WINDOW = 16  # spooled messages published before waiting for their PUBACKs
ACK_WINDOW = 256  # spooled messages out (in flight or sent) without the registry's ack
FALLBACK_SENDS = 3  # PUBACKs that delete a message while no registry ack was ever seen
MAX_BACKOFF = 16  # the wait for acks grows to at most this many times `ack_timeout_s`


class Publisher(Protocol):
    """The one thing reporting needs from a broker connection."""

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        """Publish at QoS 1 and wait for the acknowledgement."""


class Reporter:
    """Publishes the state when connected; spools events and telemetry and sends them on."""

    def __init__(
        self,
        device_id: str,
        topics: Topics,
        describe: Callable[[], tuple[dict[str, Any], dict[str, Any]]],
        spool: Spool,
        *,
        telemetry_interval_s: float | None = None,
        ack_timeout_s: float = 30.0,
        registry_acks: bool = False,
    ) -> None:
        self._device_id = device_id
        self._topics = topics
        self._describe = describe  # returns (models, trust) for the state message
        self._spool = spool
        self._interval_s = telemetry_interval_s  # in the state: the registry's liveness clock
        self._outbox = Outbox()  # what the spool's disk refused
        self._client: Publisher | None = None  # for the state
        self._sender: Publisher | None = None  # for the spool, once the state went out
        self._failed: Publisher | None = None  # a connection a publish failed on
        self._registry_acks = False  # whether this connection reads the registry's acks
        self._ack_timeout_s = ack_timeout_s
        self._registry_known_to_ack = registry_acks  # configured: never give up waiting
        self._ack_wait_s = ack_timeout_s  # doubles while nothing is acknowledged
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()  # a window was sent or acknowledged, or the link went
        self.sent = 0  # spooled messages acknowledged by the broker since start
        self.acknowledged = 0  # spooled messages the registry said it stored, since start
        self.resent = 0  # spooled messages sent again for want of the registry's ack

    @property
    def offline_will(self) -> tuple[str, bytes]:
        """The will the broker publishes if the device vanishes."""
        return self._topics.state(self._device_id), offline_payload(self._device_id)

    @property
    def spool(self) -> Spool:
        """Where events and telemetry wait for the broker."""
        return self._spool

    async def connected(self, client: Publisher, *, registry_acks: bool = False) -> None:
        """Use a new connection: publish the full state, then let the spool drain.

        `registry_acks`: the connection is subscribed to the device's `acks` topic, so spooled
        messages wait for the registry's acknowledgement; without it the PUBACK deletes them.
        """
        self._client = client
        self._registry_acks = registry_acks
        # Acks for what went out on the last connection may be queued in the session.
        resend_at = time.monotonic() + self._ack_wait_s
        await asyncio.to_thread(self._spool.postpone, resend_at)
        await self.publish_state()
        if self._client is client:
            self._sender = client
            self._wake.set()

    async def on_ack(self, payload: bytes) -> None:
        """The registry stored (or refused for good) these messages: delete them."""
        try:
            ack = parse_ack(self._device_id, payload)
        except MessageFormatError as e:
            log.warning("ignoring a malformed acks message: %s", e)
            return
        done = await asyncio.to_thread(self._spool.acknowledge, ack.epoch, ack.ranges)
        if done:
            self.acknowledged += done
            self._ack_wait_s = self._ack_timeout_s
            self._wake.set()
            self._progress.set()

    def disconnected(self) -> None:
        """Stop using the connection that was lost."""
        self._client = self._sender = None
        self._wake.set()
        self._progress.set()

    async def publish_state(self) -> None:
        """Publish the retained state message (or do nothing while offline)."""
        models, trust = self._describe()
        payload = state_payload(
            self._device_id, agent_version=__version__, models=models, trust=trust,
            telemetry_interval_s=self._interval_s,
        )  # fmt: skip
        await self._send_direct(self._topics.state(self._device_id), payload)

    async def publish_offline(self) -> None:
        """Say goodbye before a clean disconnect (the broker sends no will for those)."""
        await self._send_direct(*self.offline_will)

    async def event(
        self,
        kind: EventKind,
        *,
        model: str | None = None,
        version: int | None = None,
        **details: Any,
    ) -> None:
        """Report one update lifecycle event (spooled, then sent in order)."""
        log.info("event %s model=%s version=%s %s", kind, model, version, details or "")
        event_payload(self._device_id, kind)  # an unknown kind fails here, in the caller

        def encode(seq: int | None) -> bytes:  # None: unnumbered (no msg_seq)
            return event_payload(
                self._device_id, kind, model=model, version=version,
                **details, msg_seq=seq, msg_epoch=self._spool.epoch,
            )  # fmt: skip

        await self._spool_message(KIND_EVENTS, encode)

    async def telemetry(self, body: dict[str, Any]) -> int:
        """Spool one telemetry report; return its msg_seq."""

        def encode(seq: int | None) -> bytes:  # None: unnumbered (no msg_seq)
            numbered = {**body, "msg_seq": seq, "msg_epoch": self._spool.epoch}
            if seq is None:
                del numbered["msg_seq"]
            return telemetry_payload(self._device_id, numbered)

        return await self._spool_message(KIND_TELEMETRY, encode)

    async def flush(self, timeout_s: float) -> None:
        """Wait, at most `timeout_s`, until every spooled message is acknowledged (if online)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self._sender not in (None, self._failed) and self._spool.stats()["pending"]:
                    self._progress.clear()
                    await self._progress.wait()

    async def run(self) -> None:
        """Send spooled messages, oldest first, whenever a connection is up; never returns."""
        while True:
            sender = self._sender
            if sender is None or sender is self._failed:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._resend_overdue()
            room = ACK_WINDOW - self._spool.unacknowledged()
            if room <= 0 or not (self._spool.pending() or len(self._outbox)):
                self._wake.clear()
                await self._sleep(self._spool.next_deadline())
                continue
            records = await asyncio.to_thread(self._spool.take, min(SEND_WINDOW, room))
            try:
                await self._send_spooled(sender, records, self._unspooled_before(records))
            finally:
                self._progress.set()

    async def _resend_overdue(self) -> None:
        """Queue again what the registry has not acknowledged in time; wait longer next time."""
        overdue = await asyncio.to_thread(self._spool.expire, time.monotonic())
        if overdue:
            log.info("the registry has not acknowledged %d messages; sending them again", overdue)
            self.resent += overdue
            self._ack_wait_s = min(self._ack_wait_s * 2, self._ack_timeout_s * MAX_BACKOFF)

    async def _sleep(self, deadline: float | None) -> None:
        """Wait for a wake-up, or until `deadline` (time.monotonic) if there is one."""
        timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._wake.wait()

    def _unspooled_before(self, records: list[SpoolRecord]) -> list[SpoolRecord]:
        """The outbox's records that come before any spooled one not yet taken (msg_seq order)."""
        if not self._spool.pending():
            return self._outbox.take()
        return self._outbox.take(below=records[-1].seq if records else 0)

    async def _send_spooled(
        self, client: Publisher, records: list[SpoolRecord], unspooled: list[SpoolRecord]
    ) -> None:
        """Publish a window of records in order; delete (or forget) what the broker acknowledged."""
        batch = sorted([*records, *unspooled], key=lambda r: r.seq)
        acked: set[int] = set()  # ids of the acknowledged records
        try:
            results = await asyncio.gather(
                *(client.publish(self._topic(r.kind), r.payload) for r in batch),
                return_exceptions=True,
            )
            for record, result in zip(batch, results, strict=True):
                if result is None:
                    acked.add(id(record))
                elif isinstance(result, BrokerError):
                    self._failed = client  # wait for the next connection
                    log.info("could not send message %d: %s", record.seq, result)
                else:
                    raise result
        finally:
            self._outbox.put_back(r for r in unspooled if id(r) not in acked)
            spooled = [r.seq for r in records if id(r) in acked]
            # Off the loop: the spool's lock may be held by a thread waiting on an fsync.
            resend_at = time.monotonic() + self._ack_wait_s
            await asyncio.to_thread(self._settle, records, spooled, resend_at)
            self.sent += len(acked)

    def _settle(self, records: list[SpoolRecord], acked: list[int], resend_at: float) -> None:
        spool = self._spool
        spool.release(r.seq for r in records if r.seq not in acked)
        if not self._registry_acks:
            spool.ack(acked)  # nobody will acknowledge them: the PUBACK is all there is
            return
        # A registry that never acknowledges (it predates acks) must not keep them for ever.
        given_up = [] if spool.registry_acks or self._registry_known_to_ack else [
            seq for seq in acked if spool.sends(seq) + 1 >= FALLBACK_SENDS
        ]  # fmt: skip
        spool.ack(given_up)
        spool.sent((seq for seq in acked if seq not in given_up), resend_at)

    async def _spool_message(self, kind: str, encode: Callable[[int | None], bytes]) -> int:
        encoded: list[bytes] = []

        def append() -> tuple[int, bool]:
            seq = self._spool.append(kind, lambda n: _kept(encoded, encode(n)))
            return seq, self._spool.holds(seq)

        try:
            seq, kept = await asyncio.to_thread(append)
        except OSError as e:  # reporting never stops what is being reported on
            log.error("could not spool a %s message: %s", kind, e)
            seq, kept = 0, False
        if not kept:  # over the cap, or the disk refused it: send it from memory
            payload = encoded[0] if encoded else encode(None)
            self._outbox.add(SpoolRecord(seq if encoded else 0, kind, payload))
        self._wake.set()
        return seq

    def _topic(self, kind: str) -> str:
        if kind == KIND_EVENTS:
            return self._topics.events(self._device_id)
        return self._topics.telemetry(self._device_id)

    async def _send_direct(self, topic: str, payload: bytes) -> None:
        client = self._client
        if client is None:
            return
        try:
            await client.publish(topic, payload, retain=True)
        except AgentError as e:  # the connection dropped under us: the next one republishes
            log.info("could not publish on %s: %s", topic, e)


def _kept(into: list[bytes], payload: bytes) -> bytes:
    into.append(payload)
    return payload
