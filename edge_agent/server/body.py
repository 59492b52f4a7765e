"""Reading request bodies: media type and encoding, the size cap, the memory budget shared by
all requests, and the deadline, all checked while the body streams in."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from aiohttp import hdrs, web

from edge_agent.errors import (
    InvalidRequestError,
    OverloadedError,
    PayloadTooLargeError,
    RequestTimeoutError,
    UnsupportedMediaTypeError,
)
from edge_agent.server.encoding import PIECE_BYTES, Decoder, content_coding
from edge_agent.server.heap import give_back_memory
from edge_agent.server.settings import MiB, ServerConfig

ACCEPTED_TYPES = frozenset({"application/json", "application/octet-stream"})
CHUNK_BYTES = PIECE_BYTES  # raw bytes read at a time; decoded ones come in pieces this big
TRIM_AFTER_BYTES = 4 * MiB  # bodies freed before the heap is trimmed (heap.py)


class BodyBudget:
    """Request body bytes held in memory at once, across all requests; beyond it, 503."""

    def __init__(self, limit_bytes: int, retry_after_s: float) -> None:
        self.limit_bytes = limit_bytes
        self.retry_after_s = retry_after_s
        self.held_bytes = 0
        self._released_bytes = 0  # since the heap was last trimmed

    @contextmanager
    def reservation(self) -> Iterator[Reservation]:
        """A share of the budget, grown as a body arrives and given back on exit."""
        share = Reservation(self)
        try:
            yield share
        finally:
            self._release(share)

    def _release(self, share: Reservation) -> None:
        self.held_bytes -= share.size
        self._released_bytes += share.size
        share.size = 0
        if self.held_bytes == 0 and self._released_bytes >= TRIM_AFTER_BYTES:
            self._released_bytes = 0
            # Soon, not now: the body may still be referenced by the exception that ended it.
            asyncio.get_running_loop().call_soon(give_back_memory)


class Reservation:
    """The part of a BodyBudget that one request holds."""

    def __init__(self, budget: BodyBudget) -> None:
        self.budget = budget
        self.size = 0

    def grow_to(self, size: int) -> None:
        """Hold `size` bytes in all, or refuse the request if the budget has no room for them."""
        budget, extra = self.budget, size - self.size
        if extra <= 0:
            return
        if budget.held_bytes + extra > budget.limit_bytes:
            raise OverloadedError(
                f"the server already holds {budget.held_bytes / MiB:.1f} MiB of request bodies "
                f"and holds at most {budget.limit_bytes / MiB:g} MiB "
                "(server.max_buffered_body_mb); retry later",
                retry_after_s=budget.retry_after_s,
            )
        budget.held_bytes += extra
        self.size = size


BODY_BUDGET = web.AppKey("body_budget", BodyBudget)


def check_media(request: web.Request) -> str:
    """Refuse Content-Types and Content-Encodings the server cannot read; return the coding."""
    if hdrs.CONTENT_TYPE in request.headers and request.content_type not in ACCEPTED_TYPES:
        raise UnsupportedMediaTypeError(
            f"Content-Type {request.content_type!r} is not accepted; send application/json "
            "(with curl: -H 'Content-Type: application/json') or application/octet-stream"
        )
    return content_coding(request.headers.getall(hdrs.CONTENT_ENCODING, []))


@asynccontextmanager
async def read_body(request: web.Request, config: ServerConfig) -> AsyncIterator[bytes]:
    """The decoded request body, held against the body budget until the block exits."""
    decoder = Decoder(check_media(request))
    declared = request.content_length
    if declared is not None and declared > config.max_body_bytes and decoder.coding == "identity":
        raise PayloadTooLargeError(
            f"the body is {declared} bytes; this server accepts at most {config.max_body_bytes}"
        )
    with request.app[BODY_BUDGET].reservation() as share:
        if declared is not None and decoder.coding == "identity":
            share.grow_to(declared)  # refused at once, before any of it is read
        if decoder.coding == "identity" and request.content.is_eof():
            # All of it has arrived with the head (most small requests): nothing to wait for.
            yield _buffered(request, share, config.max_body_bytes)
            return
        try:
            async with asyncio.timeout(config.body_timeout_s):
                body = await _collect(request, decoder, share, config.max_body_bytes)
        except TimeoutError as e:
            raise RequestTimeoutError(
                f"the request body did not arrive in full within {config.body_timeout_s:g} s "
                "(server.body_timeout_s)"
            ) from e
        yield body


def _buffered(request: web.Request, share: Reservation, max_bytes: int) -> bytes:
    try:
        body = request.content.read_nowait()
    except (web.RequestPayloadError, ConnectionError) as e:
        raise InvalidRequestError(f"the request body could not be read: {e}") from e
    if len(body) > max_bytes:
        raise PayloadTooLargeError(f"the body exceeds the limit of {max_bytes} bytes")
    share.grow_to(len(body))
    return body


async def _collect(
    request: web.Request, decoder: Decoder, share: Reservation, max_bytes: int
) -> bytes:
    chunks: list[bytes] = []
    total = 0
    try:
        async for raw in request.content.iter_chunked(CHUNK_BYTES):
            for piece in decoder.decode(raw):
                total += len(piece)
                if total > max_bytes:
                    raise PayloadTooLargeError(f"the body exceeds the limit of {max_bytes} bytes")
                share.grow_to(total)
                chunks.append(piece)
    except (web.RequestPayloadError, ConnectionError) as e:
        raise InvalidRequestError(f"the request body could not be read: {e}") from e
    decoder.finish()
    return b"".join(chunks)
