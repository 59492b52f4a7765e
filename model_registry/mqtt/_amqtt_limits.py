"""The embedded broker's packet size limit, enforced on the bytes before amqtt reads a packet.

amqtt 0.12 reads whatever remaining length a fixed header announces, so one PUBLISH claiming
100 MiB made it buffer 100 MiB (and retain it). `PacketSizeLimit` wraps a connection's reader,
follows the packet boundaries amqtt reads through it, and as soon as a fixed header announces
more than the limit it ends the stream: amqtt then sees end of file, drops the connection
(publishing the will, as for any client that vanished) and nothing of the packet is kept.
"""

from __future__ import annotations

import logging

from amqtt.adapters import ReaderAdapter
from amqtt.errors import NoDataError

logger = logging.getLogger(__name__)

_CONTINUE = 0x80  # remaining-length bytes: the high bit says another byte follows


class PacketTooLargeError(NoDataError):  # type: ignore[misc]
    """A client announced a packet over the limit; amqtt treats it as the end of the stream."""


class PacketSizeLimit(ReaderAdapter):  # type: ignore[misc]
    """A ReaderAdapter that refuses any MQTT packet whose remaining length exceeds a limit."""

    def __init__(self, inner: ReaderAdapter, max_packet_bytes: int, peer: str) -> None:
        self._inner = inner
        self._max_remaining = max_packet_bytes
        self._peer = peer
        self._body_left = 0  # bytes of the current packet after its fixed header
        self._length: tuple[int, int] | None = None  # (value so far, multiplier) in a header
        self._refused = False

    async def read(self, n: int = -1) -> bytes:
        """Read from the connection, ending it once a packet is announced too large."""
        if self._refused:
            raise PacketTooLargeError("the packet size limit ended this connection")
        # amqtt reads a fixed header byte by byte and never past a packet's end; a read that
        # would (a malformed packet) gets fewer bytes, which amqtt takes for the end of stream.
        allowed = self._body_left or 1
        data: bytes = await self._inner.read(allowed if n < 0 else min(n, allowed))
        if self._body_left:
            self._body_left -= len(data)
        else:
            for byte in data:
                self._header_byte(byte)
        return data

    def feed_eof(self) -> None:
        """Pass end of file on to the wrapped reader."""
        self._inner.feed_eof()

    def _header_byte(self, byte: int) -> None:
        """Follow one fixed-header byte; raise when the remaining length is over the limit."""
        if self._length is None:
            self._length = (0, 1)  # the packet type byte; the remaining length follows
            return
        value, multiplier = self._length
        value += (byte & ~_CONTINUE) * multiplier
        if byte & _CONTINUE:
            self._length = (value, multiplier * 128)
            return
        self._length = None
        if value > self._max_remaining:
            self._refused = True
            logger.warning(
                "%s announced a packet of %d bytes, over the limit of %d: disconnected",
                self._peer, value, self._max_remaining,
            )  # fmt: skip
            raise PacketTooLargeError(f"packet of {value} bytes refused")
        self._body_left = value
