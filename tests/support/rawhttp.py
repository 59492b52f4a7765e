"""HTTP/1.1 over raw asyncio sockets, for tests that must send what no well-behaved client would:
part of a head, a body that stops, a response nobody reads."""

from __future__ import annotations

import asyncio
import json
import socket
from dataclasses import dataclass
from typing import Any

from .broker import LOCALHOST

READ_TIMEOUT_S = 60.0  # a liveness bound for one answer, not a timing assertion


@dataclass(frozen=True)
class RawResponse:
    """One response as it came off the wire."""

    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        return json.loads(self.body)


@dataclass
class RawConnection:
    """One TCP connection to the server under test."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def open(cls, port: int, *, receive_buffer: int | None = None) -> RawConnection:
        """Connect to 127.0.0.1:`port`; `receive_buffer` shrinks SO_RCVBUF before connecting."""
        if receive_buffer is None:
            reader, writer = await asyncio.open_connection(LOCALHOST, port)
            return cls(reader, writer)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (LOCALHOST, port))
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        """Write `data` and wait until the kernel has taken it."""
        self.writer.write(data)
        await self.writer.drain()

    async def response(self) -> RawResponse | None:
        """The next response; None when the server closed without sending one."""
        async with asyncio.timeout(READ_TIMEOUT_S):
            try:
                head = await self.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as e:
                if e.partial:
                    raise AssertionError(f"a response cut short: {e.partial!r}") from e
                return None
            except ConnectionResetError:
                return None
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = dict(line.split(": ", 1) for line in lines if line)
            headers = {name.lower(): value for name, value in headers.items()}
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return RawResponse(int(status_line.split()[1]), headers, body)

    async def closed(self) -> bytes:
        """Everything the server still sends until it closes the connection."""
        data = b""
        async with asyncio.timeout(READ_TIMEOUT_S):
            try:
                while chunk := await self.reader.read(65536):
                    data += chunk
            except ConnectionResetError:
                pass
        return data

    def close(self) -> None:
        """Close our end."""
        self.writer.close()


def request(
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    content_length: int | None = None,
) -> bytes:
    """A request's bytes; `content_length` may declare more than `body` holds."""
    fields = {"Host": "agent", **(headers or {})}
    if "Transfer-Encoding" not in fields and (body or content_length is not None):
        fields.setdefault(
            "Content-Length", str(len(body) if content_length is None else content_length)
        )
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    return head.encode() + b"\r\n" + body


HEALTH = request("GET", "/v2/health/live")
PARTIAL_HEAD = b"GET /v2/health/live HTTP/1.1\r\nHost: agent\r\nX-Slow: "  # and then nothing


def chunk(data: bytes) -> bytes:
    """One chunk of a `Transfer-Encoding: chunked` body."""
    return b"%x\r\n" % len(data) + data + b"\r\n"


async def answer(connection: RawConnection, data: bytes) -> RawResponse:
    """Send a whole request and read its response."""
    await connection.send(data)
    reply = await connection.response()
    assert reply is not None, "the server closed without answering"
    return reply


def assert_json_error(reply: RawResponse | None, status: int, fragment: str) -> None:
    """A JSON `{"error": ...}` answer with `status` whose message holds `fragment`."""
    assert reply is not None, "the server closed without answering"
    assert reply.status == status, reply
    assert reply.headers["content-type"].startswith("application/json")
    assert set(reply.json()) == {"error"}
    assert fragment in reply.json()["error"]
