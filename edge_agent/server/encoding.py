"""Undoing a request's Content-Encoding while it streams in, never expanding more than asked.

aiohttp's own decompression (turned off in connections.py) answers some corrupt streams with
a text/plain 400 and loses the request, and leaves others waiting forever. Here every fault is
an InvalidRequestError naming the encoding, and output comes in pieces of at most PIECE_BYTES,
so the reader can stop a decompression bomb as soon as it passes the body limit.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator

from edge_agent.errors import InvalidRequestError, UnsupportedMediaTypeError

ACCEPTED = ("identity", "gzip", "deflate")
ALIASES = {"x-gzip": "gzip"}  # RFC 9110, section 8.4.1.3
PIECE_BYTES = 64 * 1024
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_WBITS = -zlib.MAX_WBITS


def content_coding(values: Iterable[str]) -> str:
    """The one coding the Content-Encoding header `values` name; 415 for anything else."""
    named = [c.strip().lower() for value in values for c in value.split(",") if c.strip()]
    codings = [ALIASES.get(c, c) for c in named if c != "identity"]
    if len(codings) > 1:
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {', '.join(codings)!r}: one encoding at most is accepted "
            f"({', '.join(ACCEPTED)})"
        )
    coding = codings[0] if codings else "identity"
    if coding not in ACCEPTED:
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {coding!r} is not accepted; use identity, gzip or deflate"
        )
    return coding


class Decoder:
    """Turns the raw body into the decoded one, chunk by chunk; `finish` checks the end."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._raw_bytes = 0
        self._members = 0
        self._inflater: zlib._Decompress | None = None

    def decode(self, chunk: bytes) -> Iterator[bytes]:
        """The decoded bytes of the next raw `chunk`, in pieces of at most PIECE_BYTES."""
        self._raw_bytes += len(chunk)
        if self.coding == "identity":
            yield chunk  # the reader asks for chunks of at most PIECE_BYTES itself
            return
        while chunk:
            inflater = self._inflater
            if inflater is None or inflater.eof:
                inflater = self._start_member(chunk)
            yield from self._inflate(inflater, chunk)
            chunk = inflater.unused_data if inflater.eof else b""

    def finish(self) -> None:
        """Refuse a body that ended inside a compressed stream (or held none at all)."""
        if self.coding == "identity":
            return
        if self._raw_bytes == 0:
            raise InvalidRequestError(
                f"the body is empty, which is not {self.coding} data (Content-Encoding)"
            )
        if self._inflater is None or not self._inflater.eof:
            raise InvalidRequestError(
                f"the {self.coding} body is truncated: it ends inside the compressed stream"
            )

    def _start_member(self, chunk: bytes) -> zlib._Decompress:
        # gzip allows several members one after the other (RFC 1952); deflate is one stream.
        if self._members and self.coding != "gzip":
            raise InvalidRequestError(
                f"the {self.coding} body has data after the end of its compressed stream"
            )
        self._members += 1
        self._inflater = zlib.decompressobj(self._wbits(chunk))
        return self._inflater

    def _wbits(self, chunk: bytes) -> int:
        if self.coding == "gzip":
            return _GZIP_WBITS
        # RFC 9110 deflate is the zlib format, but some clients send raw deflate: look at the
        # zlib header (compression method 8 and a checksum of the first two bytes).
        is_zlib = chunk[0] & 0x0F == 8 and (len(chunk) < 2 or (chunk[0] << 8 | chunk[1]) % 31 == 0)
        return _ZLIB_WBITS if is_zlib else _RAW_WBITS

    def _inflate(self, inflater: zlib._Decompress, chunk: bytes) -> Iterator[bytes]:
        data = chunk
        while True:  # a full piece may leave output pending even with all input consumed
            try:
                piece = inflater.decompress(data, PIECE_BYTES)
            except zlib.error as e:
                raise InvalidRequestError(self._corrupt(e)) from e
            if piece:
                yield piece
            data = inflater.unconsumed_tail
            if inflater.eof or (len(piece) < PIECE_BYTES and not data):
                return

    def _corrupt(self, error: zlib.error) -> str:
        if self._members > 1:
            return f"the {self.coding} body has data after the end of its compressed stream"
        return f"the body is not valid {self.coding} data (Content-Encoding): {error}"
