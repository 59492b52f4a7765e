"""Cutting an MQTT 3.1.1 byte stream into packets, so a relay can count and act on each one."""

from __future__ import annotations

from dataclasses import dataclass

CONNECT, CONNACK, PUBLISH, PUBACK = 1, 2, 3, 4
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK = 8, 9, 10, 11
PINGREQ, PINGRESP, DISCONNECT = 12, 13, 14


@dataclass(frozen=True)
class Packet:
    """One whole MQTT packet as it crossed the link."""

    kind: int  # the packet type, 1 (CONNECT) .. 14 (DISCONNECT)
    raw: bytes  # fixed header included
    topics: tuple[str, ...]  # PUBLISH: its topic; (UN)SUBSCRIBE: the filters; else empty

    @property
    def size(self) -> int:
        """Bytes on the wire."""
        return len(self.raw)

    @property
    def payload_size(self) -> int:
        """PUBLISH only: the application payload's length (0 for other packets)."""
        if self.kind != PUBLISH:
            return 0
        body = self.raw[_header_length(self.raw) :]
        qos = (self.raw[0] >> 1) & 3
        topic_length = int.from_bytes(body[:2], "big")
        return len(body) - 2 - topic_length - (2 if qos else 0)


class FrameReader:
    """Feed bytes in any pieces; take out the whole packets they complete."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Packet]:
        """Append `data`; return every packet now complete, in order."""
        self._buffer += data
        packets = []
        while (length := _complete_length(self._buffer)) is not None:
            raw = bytes(self._buffer[:length])
            del self._buffer[:length]
            packets.append(_parse(raw))
        return packets


def _complete_length(buffer: bytearray) -> int | None:
    """The length of the first packet if it is all in `buffer`, else None."""
    if len(buffer) < 2:
        return None
    remaining, multiplier = 0, 1
    for position in range(1, 5):
        if position >= len(buffer):
            return None
        byte = buffer[position]
        remaining += (byte & 0x7F) * multiplier
        multiplier *= 128
        if not byte & 0x80:
            total = position + 1 + remaining
            return total if len(buffer) >= total else None
    raise ValueError("malformed MQTT remaining length")


def _header_length(raw: bytes) -> int:
    position = 1
    while raw[position] & 0x80:
        position += 1
    return position + 1


def _parse(raw: bytes) -> Packet:
    kind = raw[0] >> 4
    body = raw[_header_length(raw) :]
    if kind == PUBLISH:
        length = int.from_bytes(body[:2], "big")
        return Packet(kind, raw, (body[2 : 2 + length].decode("utf-8", "replace"),))
    if kind in (SUBSCRIBE, UNSUBSCRIBE):
        return Packet(kind, raw, _filters(body[2:], with_qos=kind == SUBSCRIBE))
    return Packet(kind, raw, ())


def _filters(data: bytes, *, with_qos: bool) -> tuple[str, ...]:
    filters, position = [], 0
    while position + 2 <= len(data):
        length = int.from_bytes(data[position : position + 2], "big")
        filters.append(data[position + 2 : position + 2 + length].decode("utf-8", "replace"))
        position += 2 + length + (1 if with_qos else 0)
    return tuple(filters)
