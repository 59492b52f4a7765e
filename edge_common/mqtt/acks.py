"""Waiting for the broker's acknowledgement of one packet, bounded by the broker's silence.

A broker that keeps the connection up (it answers keep-alive pings) but never sends the SUBACK
of one SUBSCRIBE would hold its caller forever: NATS does this when the JetStream consumer of a
subscription cannot be made. The bound counts silence, the time since the broker last sent us
a message or an acknowledgement, not the wait itself: on a slow link an acknowledgement queued
behind large retained messages comes late, and those messages show the broker still serves
the connection. Pings do not count: paho answers them below us, and a node that answers
pings may still serve nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
PACKETS = {"subscribe": "SUBACK", "unsubscribe": "UNSUBACK", "publish": "PUBACK"}


def ack_name(what: str) -> str:
    """The acknowledgement an operation described as 'subscribe to ...' waits for."""
    return PACKETS.get(what.split(" ", 1)[0], "acknowledgement")


async def within_silence(
    future: asyncio.Future[T], timeout_s: float | None, heard_at: Callable[[], float]
) -> T:
    """Await `future`; TimeoutError once `timeout_s` passed since the start or `heard_at()`.

    `heard_at` returns the loop time of the broker's last packet; a `timeout_s` of None waits
    without a bound. The future is never cancelled here: its owner still resolves or fails it
    when the connection ends.
    """
    if timeout_s is None:
        return await future
    loop = asyncio.get_running_loop()
    started = loop.time()
    while not future.done():
        remaining = timeout_s - (loop.time() - max(started, heard_at()))
        if remaining <= 0:
            raise TimeoutError
        await asyncio.wait((future,), timeout=remaining)
    return future.result()
