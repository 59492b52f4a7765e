"""The fast lane: plain inference requests answered without aiohttp's request machinery.

Why it exists: on `edge-agent run` at concurrency 32, aiohttp's share of a request (its request
and response objects, the stream writer, the router, the middleware chain, a task and a future
per request) cost more CPU than all the agent does for a request of a small model; aiohttp
answering a constant took 58 µs of CPU per request where a bare asyncio protocol took 10 µs
(benchmarks/README.md, "Serving: the fast lane").

What it takes: a request that is plain and whole in the bytes the connection received:
`POST /v2/models/{m}/infer` or `.../versions/{v}/infer`, HTTP/1.1, at most MAX_HEADERS header
lines of visible ASCII, no header twice, a Content-Length body that has arrived in full (or
arrives with the next read), no Transfer-Encoding, Content-Encoding, Expect or Upgrade, an
accepted Content-Type or none. Anything else, and anything it is unsure of, goes to aiohttp
byte for byte: the fast lane accepts a strict subset of what aiohttp reads and reads it the
same way. What it does with a request is what the aiohttp route does, through the same code:
the bearer token, the body budget, `infer_exchange` (decoding, validation, batching,
experiments), the domain errors and their statuses, the request metrics, compression.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
import zlib
from dataclasses import dataclass
from http import HTTPStatus

from aiohttp.http import SERVER_SOFTWARE

from edge_agent.errors import AgentError
from edge_agent.server.admission import MAX_HEAD_BYTES, MAX_HEADERS
from edge_agent.server.body import ACCEPTED_TYPES, BodyBudget
from edge_agent.server.dataplane import DataPlane
from edge_agent.server.inference import COMPRESS_BYTES, Answer, infer_exchange
from edge_agent.server.middleware import (
    CLIENT_CLOSED,
    check_bearer,
    domain_error_reply,
    error_body,
    record_request,
)
from edge_agent.server.oip import HEADER_LENGTH, ROUTING_HEADER
from edge_agent.server.settings import ServerConfig

log = logging.getLogger(__name__)

REQUEST_LINE = re.compile(
    rb"POST /v2/models/([A-Za-z0-9][A-Za-z0-9._-]{0,127})(?:/versions/([0-9]{1,18}))?/infer"
    rb" HTTP/1\.1"
)
# A field name is a token; a value is visible ASCII with inner spaces or tabs (RFC 9110 5.5,
# without obs-text): whatever else a head holds is aiohttp's to judge.
HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*((?:[!-~][ \t]*)*)")
# Their presence sends a request to aiohttp: framing, codings and upgrades are its business.
NOT_PLAIN = frozenset({b"transfer-encoding", b"content-encoding", b"expect", b"upgrade"})
CONNECTION_VALUES = frozenset({b"keep-alive", b"close"})
HEADER_LENGTH_FIELD = HEADER_LENGTH.lower().encode()  # header names as `headers` keys them
ROUTING_FIELD = ROUTING_HEADER.lower().encode()
ACCEPTED_MEDIA = frozenset(t.encode() for t in ACCEPTED_TYPES)
# Compressed as aiohttp's `enable_compression` would choose: the first coding accepted.
CODINGS = (("deflate", zlib.MAX_WBITS), ("gzip", 16 + zlib.MAX_WBITS))


@dataclass(frozen=True, slots=True)
class PlainRequest:
    """An inference request the fast lane answers."""

    model: str
    version: str | None
    headers: dict[bytes, bytes]  # names in lower case
    body: bytes
    close: bool  # `Connection: close`

    @property
    def path(self) -> str:
        """The request's path, for log lines."""
        if self.version is None:
            return f"/v2/models/{self.model}/infer"
        return f"/v2/models/{self.model}/versions/{self.version}/infer"

    def header(self, name: bytes) -> str | None:
        """A header's value (`name` in lower case), or None."""
        value = self.headers.get(name)
        return None if value is None else value.decode("ascii")


def recognize(data: bytes, max_body_bytes: int) -> PlainRequest | int | None:
    """The plain request `data` holds exactly; the bytes a plain request still needs when its
    body has not all arrived (an int); or None: not for the fast lane."""
    end = data.find(b"\r\n\r\n", 0, MAX_HEAD_BYTES)
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    line = REQUEST_LINE.fullmatch(lines[0])
    if line is None or len(lines) > MAX_HEADERS + 1:
        return None
    headers = _headers(lines)
    if headers is None:
        return None
    length = _content_length(headers, max_body_bytes)
    if length is None:
        return None
    total = end + 4 + length
    if len(data) != total:
        return total - len(data) if len(data) < total else None  # more: pipelined, aiohttp's
    model, version = line.group(1).decode(), line.group(2)
    close = headers.get(b"connection", b"keep-alive").lower() == b"close"
    version_text = None if version is None else version.decode()
    return PlainRequest(model, version_text, headers, data[end + 4 :], close)


def _headers(lines: list[bytes]) -> dict[bytes, bytes] | None:
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        field = HEADER_LINE.fullmatch(line)
        if field is None:
            return None
        name = field.group(1).lower()
        if name in headers or name in NOT_PLAIN:
            return None
        headers[name] = field.group(2).rstrip(b" \t")
    connection = headers.get(b"connection")
    if connection is not None and connection.lower() not in CONNECTION_VALUES:
        return None
    media = headers.get(b"content-type")
    if media is not None and media.split(b";")[0].strip().lower() not in ACCEPTED_MEDIA:
        return None  # aiohttp's route answers 415 with its words
    return headers


def _content_length(headers: dict[bytes, bytes], max_body_bytes: int) -> int | None:
    value = headers.get(b"content-length")
    if value is None or not value.isdigit() or len(value) > 10:
        return None
    length = int(value)
    return length if length <= max_body_bytes else None  # too large: aiohttp's 413


class FastLane:
    """Answers plain requests for the connections of one server."""

    def __init__(self, dataplane: DataPlane, config: ServerConfig, budget: BodyBudget) -> None:
        self._dataplane = dataplane
        self._metrics = dataplane.metrics
        self._repository = dataplane.repository
        self._budget = budget
        self._token = None if config.token is None else config.token.encode()
        self.max_body_bytes = config.max_body_bytes
        self.answered = 0  # requests answered here, since start (the rest went to aiohttp)
        self._date = (0, "")

    async def answer(self, request: PlainRequest) -> bytes:
        """The whole HTTP response to `request`."""
        started, status, answered = time.perf_counter(), CLIENT_CLOSED, None
        self.answered += 1
        try:
            try:
                answer = await self._exchange(request)
            except AgentError as e:
                status, message, headers = domain_error_reply(e, "POST", request.path)
                return self._error(status, message, headers or {}, request.close)
            except Exception:
                log.exception("POST %s failed unexpectedly", request.path)
                status = 500
                return self._error(status, "internal server error", {}, request.close)
            status, answered = 200, answer.model_version
            return self._ok(answer, request)
        finally:
            record_request(
                self._metrics, self._repository, request.model, answered=answered,
                status=status, endpoint="infer", seconds=time.perf_counter() - started,
            )  # fmt: skip

    async def _exchange(self, request: PlainRequest) -> Answer:
        if self._token is not None:
            check_bearer(request.header(b"authorization"), self._token)
        with self._budget.reservation() as share:
            share.grow_to(len(request.body))
            return await infer_exchange(
                self._dataplane, request.model, request.version, request.body,
                header_length=request.header(HEADER_LENGTH_FIELD),
                routing=request.header(ROUTING_FIELD),
            )  # fmt: skip

    def _ok(self, answer: Answer, request: PlainRequest) -> bytes:
        headers: dict[str, str] = {}
        if answer.json_length is None:
            media = "application/json"
        else:
            media = "application/octet-stream"
            headers[HEADER_LENGTH] = str(answer.json_length)
        payload = answer.payload
        accepted = (request.headers.get(b"accept-encoding") or b"").decode().lower()
        if len(payload) > COMPRESS_BYTES and accepted:
            for coding, wbits in CODINGS:
                if coding in accepted:
                    packer = zlib.compressobj(wbits=wbits)
                    payload = packer.compress(payload) + packer.flush()
                    headers["Content-Encoding"] = coding
                    break
        return self._frame(200, media, payload, headers, request.close)

    def _error(self, status: int, message: str, headers: dict[str, str], close: bool) -> bytes:
        return self._frame(
            status, "application/json; charset=utf-8", error_body(message), headers, close
        )

    def _frame(
        self, status: int, media: str, body: bytes, headers: dict[str, str], close: bool
    ) -> bytes:
        lines = [
            f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
            f"Content-Type: {media}",
            f"Content-Length: {len(body)}",
            f"Date: {self._http_date()}",
            f"Server: {SERVER_SOFTWARE}",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    def _http_date(self) -> str:
        now = int(time.time())
        if self._date[0] != now:  # formatted once a second, as aiohttp does
            self._date = (now, email.utils.formatdate(now, usegmt=True))
        return self._date[1]
