"""Guards on the endpoint's connections: how many may be open, and deadlines for slow clients.

aiohttp bounds neither the number of connections nor the time a request head may take to
arrive: a client that opens connections, sends part of a head and then nothing holds each one
(and a file descriptor) until the keep-alive timeout, an hour by default. A few thousand of
them exhaust the descriptors and the agent stops answering anyone. GuardedHandler is aiohttp's
RequestHandler with a timer per connection that the start of the request cancels, a count of
open connections shared by one server, a deadline for responses the client does not read, and
JSON bodies for the errors aiohttp answers itself (a malformed head). The keep-alive timeout is
aiohttp's own; the body deadline and budget are where bodies are read (body.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from edge_agent.server.admission import MAX_HEAD_BYTES, MAX_HEADERS, Admission, ConnectionCount
from edge_agent.server.fastlane import FastLane, PlainRequest, recognize
from edge_agent.server.middleware import error_response

log = logging.getLogger(__name__)

LINGER_S = 2.0  # after answering early, read and drop the rest of a body this long, then close
HEAD_END = b"\r\n\r\n"
HOLD_S = 0.05  # a plain request's body may follow its head this long, then aiohttp reads it
HOLD_BYTES = 64 * 1024  # the largest plain request held for the rest of its body
BACKLOG_BYTES = 64 * 1024  # bytes sent behind a request being answered, before reading pauses


class _Phase(enum.Enum):
    HEAD = "head"  # waiting for a request head: the head timer runs
    BUSY = "busy"  # a request is being handled
    IDLE = "idle"  # between requests: aiohttp's keep-alive timer runs
    CLOSING = "closing"  # answered, no request follows: aiohttp drops what comes, then closes
    DISCARD = "discard"  # refused: what still arrives is dropped until the connection closes


class GuardedHandler(web.RequestHandler):
    """aiohttp's connection handler, with the connection cap and the deadlines above."""

    __slots__ = (
        "_admission",
        "_backlog",
        "_backlog_paused",
        "_count",
        "_fast",
        "_head_bytes",
        "_head_tail",
        "_head_timer",
        "_held",
        "_hold_timer",
        "_lane",
        "_phase",
        "_send_timer",
    )

    def __init__(
        self,
        manager: web.Server,
        count: ConnectionCount,
        lane: FastLane | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(manager, **kwargs)
        self._count = count
        self._lane = lane  # None: every request goes through aiohttp
        self._fast: asyncio.Task[None] | None = None  # the fast lane's answer being made
        self._held = b""  # a plain request's head, waiting for the rest of its body
        self._hold_timer: asyncio.TimerHandle | None = None
        self._backlog = bytearray()  # what arrived while the fast lane was answering
        self._backlog_paused = False
        self._admission = Admission.DROP
        self._phase = _Phase.HEAD
        self._head_bytes = 0  # of the head being received; -1 once it is complete
        self._head_tail: bytes | None = None  # its last bytes, where a split head end begins
        self._head_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None

    @property
    def refused(self) -> bool:
        """Whether this connection came over the cap and gets only a 503."""
        return self._admission is Admission.REFUSE

    def refusal(self) -> web.Response:
        """The 503 a refused connection gets, after which it closes."""
        limits = self._count.limits
        message = (
            f"the server has {limits.max_connections} connections open, its limit "
            f"(server.max_connections); retry after {limits.retry_after_s} s"
        )
        response = error_response(503, message, {hdrs.RETRY_AFTER: str(limits.retry_after_s)})
        response.force_close()
        return response

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Admit, refuse or drop the connection; start the head timer of the first request."""
        self._admission = self._count.admit()
        if self._admission is Admission.DROP:
            transport.close()  # aiohttp never sees it: no task, no timers
            return
        super().connection_made(transport)
        self._await_head()

    def data_received(self, data: bytes) -> None:
        """Give a plain request to the fast lane, anything else to aiohttp."""
        if self._fast is not None:  # answers go out in order: the next request waits
            self._queue_behind_answer(data)
            return
        if self._held:
            data, self._held = self._held + data, b""
            _cancel(self._hold_timer)
            self._hold_timer = None
            if self._offer(data, hold=False):
                return
        elif data and self._lane_open() and self._offer(data, hold=True):
            return
        self._to_aiohttp(data)

    def _lane_open(self) -> bool:
        """Whether the connection is between requests, with nothing of aiohttp's pending."""
        between = self._phase is _Phase.IDLE or (
            self._phase is _Phase.HEAD and self._head_tail is None
        )
        return (
            between
            and self._lane is not None
            and self._admission is Admission.SERVE
            and not (self._request_in_progress or self._messages or self._upgraded)
            and self._payload_parser is None
            and not (self._force_close or self._close)
        )

    def _offer(self, data: bytes, *, hold: bool) -> bool:
        """Answer `data` in the fast lane if it is a plain request; hold the start of one
        whose body is still coming (once); say whether the fast lane took the bytes."""
        lane = self._lane
        if lane is None:
            return False
        found = recognize(data, lane.max_body_bytes)
        if isinstance(found, PlainRequest):
            self._phase = _Phase.BUSY
            _cancel(self._head_timer)
            self._head_timer = None
            self._fast = self._loop.create_task(self._answer_fast(lane, found))
            return True
        if hold and isinstance(found, int) and len(data) + found <= HOLD_BYTES:
            self._held = data
            self._hold_timer = self._loop.call_later(HOLD_S, self._release_held)
            return True
        return False

    def _release_held(self) -> None:
        # The body is slow: aiohttp reads it, under the body deadline (body.py).
        self._hold_timer = None
        data, self._held = self._held, b""
        if data:
            self._to_aiohttp(data)

    async def _answer_fast(self, lane: FastLane, request: PlainRequest) -> None:
        try:
            reply = await lane.answer(request)
        finally:
            self._fast = None
        transport = self.transport
        if transport is None:
            return  # the client has gone
        transport.write(reply)
        if request.close:
            self.force_close()  # closes once the answer is written
            return
        self._phase = _Phase.IDLE
        # aiohttp's keep-alive timer closes the connection if nothing follows in time.
        close_time = self._loop.time() + self._keepalive_timeout
        self._next_keepalive_close_time = close_time
        if self._keepalive_handle is None and self._keepalive_timeout > 0:
            self._keepalive_handle = self._loop.call_at(close_time, self._process_keepalive)
        if self._backlog:
            data = bytes(self._backlog)
            self._backlog.clear()
            if self._backlog_paused:
                self._backlog_paused = False
                transport.resume_reading()
            self.data_received(data)

    def _queue_behind_answer(self, data: bytes) -> None:
        self._backlog += data
        transport = self.transport
        if len(self._backlog) > BACKLOG_BYTES and transport and not self._backlog_paused:
            self._backlog_paused = True  # resumed when the answer has gone out
            transport.pause_reading()

    async def shutdown(self, timeout: float | None = 15.0) -> None:  # noqa: ASYNC109 - aiohttp's signature
        """Let the fast lane's answer in progress go out, then shut down as aiohttp does."""
        self._lane = None  # no new request takes the fast lane
        fast = self._fast
        if fast is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await asyncio.shield(fast)
        await super().shutdown(timeout)

    def _to_aiohttp(self, data: bytes) -> None:
        """Start the head timer at a new request's first byte; bound the size of its head."""
        if data and self._phase is _Phase.IDLE:
            self._await_head()
        if data and self._phase is _Phase.HEAD and self._head_bytes >= 0:
            self._measure_head(data)
        if self._phase is not _Phase.DISCARD:
            super().data_received(data)  # which does nothing once the connection is closed

    def _measure_head(self, data: bytes) -> None:
        # The head ends at the first empty line; empty lines before the request line are
        # allowed (RFC 9112, section 2.2): until its first byte, `_head_tail` is None.
        window = data if self._head_tail is None else self._head_tail + data
        if self._head_tail is None:
            window = window.lstrip(b"\r\n")
        end = window.find(HEAD_END)
        after_head = len(window) - end - len(HEAD_END) if end >= 0 else 0
        size = self._head_bytes + len(data) - after_head
        if size > MAX_HEAD_BYTES and self.transport is not None:
            self._refuse_head(self.transport)
            return
        self._head_bytes = -1 if end >= 0 else size
        if window:
            self._head_tail = window[-len(HEAD_END) + 1 :]

    def _refuse_head(self, transport: asyncio.Transport) -> None:
        # Closing with the rest of the head unread would reset the connection and could take
        # the answer with it: end our side, drop what still comes, and close after LINGER_S.
        transport.write(self._count.head_too_large_reply)
        if transport.can_write_eof():
            transport.write_eof()
        self._phase = _Phase.DISCARD
        _cancel(self._head_timer)
        self._head_timer = self._loop.call_later(LINGER_S, self.force_close)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Stop the timers and count the connection out."""
        _cancel(self._head_timer)
        self._head_timer = None
        _cancel(self._hold_timer)
        self._hold_timer = None
        _cancel(self._send_timer)
        self._send_timer = None
        if self._admission is Admission.DROP:
            return
        self._count.release(self._admission)
        self._admission = Admission.DROP  # counted out once
        super().connection_lost(exc)

    def pause_writing(self) -> None:
        """The client stopped reading: it has send_timeout_s to start again."""
        super().pause_writing()
        timeout = self._count.limits.send_timeout_s
        self._send_timer = self._loop.call_later(timeout, self._send_timed_out)

    def resume_writing(self) -> None:
        """The client reads again."""
        _cancel(self._send_timer)
        self._send_timer = None
        super().resume_writing()

    def request_started(self) -> None:
        """A request head arrived in full and its handling begins."""
        self._phase = _Phase.BUSY
        _cancel(self._head_timer)
        self._head_timer = None

    def request_finished(self, closing: bool) -> None:
        """The handler has answered; unless the connection is closing, the next byte starts
        the next request's head timer (what still comes of an unread body is not a head)."""
        self._phase = _Phase.CLOSING if closing else _Phase.IDLE

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Answer a request aiohttp refuses itself (a malformed head) with a JSON error."""
        if status >= 500:
            log.error("request from %s failed: %r", request.remote, exc, exc_info=exc)
        else:
            log.debug("malformed request from %s: %s", request.remote, exc)
        if request.writer.output_size > 0:
            raise ConnectionError("the response has begun; no error answer can follow it")
        text = HTTPStatus(status).phrase.lower()
        if status < 500 and message:
            text = f"malformed HTTP request: {message.strip().splitlines()[0].rstrip(':')}"
        response = error_response(status, text)
        response.force_close()
        return response

    def _await_head(self) -> None:
        self._phase = _Phase.HEAD
        self._head_bytes, self._head_tail = 0, None
        _cancel(self._head_timer)
        self._head_timer = None
        timeout = self._count.limits.header_timeout_s
        self._head_timer = self._loop.call_later(timeout, self._head_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._phase is not _Phase.HEAD or self._head_bytes < 0 or self.transport is None:
            return  # the head is in: its request is about to start
        if self._head_bytes != 0:  # a client that sent nothing has asked nothing: just close
            self.transport.write(self._count.head_timeout_reply)
        self.force_close()

    def _send_timed_out(self) -> None:
        self._send_timer = None
        if self.transport is not None:
            log.debug("dropping a client that stopped reading its response")
            self.transport.abort()  # close() would wait for a buffer that never drains


def _cancel(timer: asyncio.TimerHandle | None) -> None:
    if timer is not None:
        timer.cancel()


def handler_factory(
    runner: web.AppRunner, count: ConnectionCount, lane: FastLane | None = None
) -> Callable[[], GuardedHandler]:
    """The protocol factory of a listener: one GuardedHandler per connection (with `lane`, plain
    inference requests take the fast lane)."""
    manager, loop = runner.server, asyncio.get_running_loop()
    if manager is None:
        raise RuntimeError("set the runner up before making handlers")
    options: dict[str, Any] = {
        "loop": loop,
        "keepalive_timeout": count.limits.idle_timeout_s,
        "lingering_time": LINGER_S,
        "max_headers": MAX_HEADERS,
        "auto_decompress": False,  # encoding.py decodes bodies, with errors of its own
        "access_log": None,
    }
    return lambda: GuardedHandler(manager, count, lane, **options)


@web.middleware
async def connection_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Stop the head timer, answer refused connections 503, close after an unread body."""
    protocol = request.protocol
    if not isinstance(protocol, GuardedHandler):  # an app served some other way (tests)
        return await handler(request)
    protocol.request_started()
    closing = True
    try:
        response = protocol.refusal() if protocol.refused else await handler(request)
        if not request.content.is_eof():
            response.force_close()  # the rest of the body is dropped (LINGER_S), then we close
        closing = response.keep_alive is False
        return response
    finally:
        protocol.request_finished(closing)


class GuardedSite(web.BaseSite):
    """A TCP or unix-socket listener whose connections get a handler from `factory`."""

    __slots__ = ("_factory", "_host", "_path", "_port")

    def __init__(
        self,
        runner: web.AppRunner,
        factory: Callable[[], GuardedHandler],
        *,
        host: str | None = None,
        port: int = 0,
        path: str | None = None,
    ) -> None:
        super().__init__(runner)
        self._factory, self._host, self._port, self._path = factory, host, port, path

    @property
    def name(self) -> str:
        """Where it listens."""
        return f"unix:{self._path}" if self._path else f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        """Bind and listen."""
        await super().start()
        loop = asyncio.get_running_loop()
        if self._path is not None:
            self._server = await loop.create_unix_server(
                self._factory, self._path, backlog=self._backlog
            )
        else:
            self._server = await loop.create_server(
                self._factory, self._host, self._port, backlog=self._backlog
            )
