"""Telling each device what the registry has stored of its events and telemetry.

The broker's PUBACK only says that the broker has a message; a broker that restarts without its
state loses what it had not handed on. So after each database commit the ingest notes the
`(msg_epoch, msg_seq)` of every numbered message it stored, found already stored (a resend) or
refused for good (malformed: resending cannot help), and `AckSender` publishes them on the
device's `{p}/devices/{id}/acks` topic (docs/protocol.md section 8). The agent deletes a spooled
message only once it is acknowledged here, and sends again what is not.

Acks are cheap: notes are gathered for `ACK_INTERVAL_S` and go out as one message per device
and epoch, the numbers folded into ranges (a drained spool is one range). Nothing here is
durable: an ack lost with the registry or the broker is answered by the agent's resend, which
is stored once (the unique index on device, epoch and number) and acknowledged again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from edge_protocol import Topics
from edge_protocol.messages import MAX_ACK_RANGES, ack_payload

log = logging.getLogger(__name__)

ACK_INTERVAL_S = 0.25  # notes gathered before they go out: at most one ack per device this often
MAX_NOTED = 1_000_000  # numbers held for the next round, all devices; beyond, the agent resends
PUBLISH_TIMEOUT_S = 10.0  # a round waits no longer for the broker's PUBACKs
PARALLEL_PUBLISHES = 200  # acks in flight at once, as many as the connection's window

Key = tuple[str, str]  # (device id, msg_epoch)


class Transport(Protocol):
    """What the sender needs from the registry's broker connection."""

    @property
    def connected(self) -> bool:
        """Whether the connection is up now."""

    async def publish(self, topic: str, payload: bytes, *, retain: bool = True) -> None:
        """Publish at QoS 1 and wait for the broker's acknowledgement."""


class AckBook:
    """The message numbers stored since the last round, by device and epoch."""

    def __init__(self, max_noted: int = MAX_NOTED) -> None:
        self._max_noted = max_noted
        self._noted: dict[Key, set[int]] = {}
        self._count = 0
        self.wake = asyncio.Event()
        # For /metrics: ack messages the broker took, and those given up (no connection, no
        # PUBACK in time); numbers not noted for the bound. Their devices send those again.
        self.outcomes: Counter[str] = Counter({"sent": 0, "not_sent": 0, "overflowed": 0})

    def __len__(self) -> int:
        return self._count

    def note(self, device_id: str, epoch: str, seq: int) -> None:
        """Remember that message `seq` of `device_id`'s `epoch` needs no resending."""
        if self._count >= self._max_noted:
            self.outcomes["overflowed"] += 1
            return
        seqs = self._noted.setdefault((device_id, epoch), set())
        if seq not in seqs:
            seqs.add(seq)
            self._count += 1
        self.wake.set()

    def take(self) -> dict[Key, list[tuple[int, int]]]:
        """Everything noted, as ascending inclusive ranges per (device, epoch); forget it."""
        noted, self._noted, self._count = self._noted, {}, 0
        self.wake.clear()
        return {key: ranges_of(seqs) for key, seqs in noted.items()}


def ranges_of(seqs: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted numbers folded into inclusive ranges: 1, 2, 3, 7 -> (1, 3), (7, 7)."""
    ranges: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if ranges and seq == ranges[-1][1] + 1:
            ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges


class AckSender:
    """Publishes what the book holds, one round every ACK_INTERVAL_S at most."""

    def __init__(self, book: AckBook, transport: Transport, topics: Topics) -> None:
        self._book = book
        self._transport = transport
        self._topics = topics

    async def run(self) -> None:
        """Send rounds of acks until cancelled."""
        while True:
            await self._book.wake.wait()
            await asyncio.sleep(ACK_INTERVAL_S)  # let the next batches' notes join this round
            await self.send_round()

    async def send_round(self) -> None:
        """Publish everything noted so far."""
        rounds = self._book.take()
        if not rounds:
            return
        messages = [
            (
                self._topics.acks(device_id),
                ack_payload(device_id, epoch, ranges[i : i + MAX_ACK_RANGES]),
            )
            for (device_id, epoch), ranges in rounds.items()
            for i in range(0, len(ranges), MAX_ACK_RANGES)
        ]
        if not self._transport.connected:
            # Queued in the client they would reach a restarted broker late and all at once;
            # the agents send the messages again, and those are acknowledged then.
            self._book.outcomes["not_sent"] += len(messages)
            return
        limit = asyncio.Semaphore(PARALLEL_PUBLISHES)
        results = await asyncio.gather(
            *(self._publish(limit, topic, payload) for topic, payload in messages)
        )
        self._book.outcomes["sent"] += sum(results)
        self._book.outcomes["not_sent"] += len(results) - sum(results)

    async def _publish(self, limit: asyncio.Semaphore, topic: str, payload: bytes) -> bool:
        async with limit:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(PUBLISH_TIMEOUT_S):
                    await self._transport.publish(topic, payload, retain=False)
                    return True
            log.debug("could not acknowledge on %s; the device sends again", topic)
            return False
