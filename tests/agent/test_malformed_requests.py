"""Requests no HTTP client should send, on raw sockets: malformed, oversized or endless heads,
compressed bodies that break while they arrive. Each gets a JSON error, then the connection
closes."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import zlib

import pytest

from tests.agent.conftest import ServerFactory
from tests.support.rawhttp import (
    HEALTH,
    PARTIAL_HEAD,
    RawConnection,
    answer,
    assert_json_error,
    request,
)

INFER = "/v2/models/classifier/infer"
JSON = {"Content-Type": "application/json"}


MALFORMED_HEADS = [
    pytest.param(b"GET / HTTP/1.1\r\nHost agent\r\n\r\n", id="header-without-colon"),
    pytest.param(b"FO(O / HTTP/1.1\r\n\r\n", id="bad-method"),
    pytest.param(
        b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(40)) + b"\r\n",
        id="too-many-headers",
    ),
    pytest.param(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", id="request-line-too-long"),
    pytest.param(b"GET / HTTP/1.1\r\nX: " + b"a" * 9000 + b"\r\n\r\n", id="header-too-long"),
    pytest.param(
        b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        id="length-and-chunked",
    ),
    pytest.param(
        request("POST", INFER, b"zz\r\nabc\r\n0\r\n\r\n", {"Transfer-Encoding": "chunked"}),
        id="bad-chunk-size",
    ),
    pytest.param(request("POST", INFER, b"", {"Content-Length": "abc"}), id="bad-length"),
    pytest.param(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", id="tls-client-hello"),
]


@pytest.mark.parametrize("data", MALFORMED_HEADS)
async def test_a_malformed_head_gets_a_json_400(start_server: ServerFactory, data: bytes) -> None:
    server = await start_server()
    assert server.port is not None
    connection = await RawConnection.open(server.port)
    await connection.send(data)

    assert_json_error(await connection.response(), 400, "malformed HTTP request")
    assert await connection.closed() == b""


GZIPPED = gzip.compress(b'{"inputs": []}' * 200)
DEFLATED = zlib.compress(b'{"inputs": []}' * 200)
# (coding, parts sent one by one, bytes declared but never sent, the error)
BROKEN_IN_PARTS = [
    pytest.param("gzip", [GZIPPED[:20], GZIPPED[20:-3]], 0, "truncated", id="gzip-truncated"),
    pytest.param("deflate", [DEFLATED[:9], DEFLATED[9:-3]], 0, "truncated", id="deflate-truncated"),
    # The error is in the data: answered before the declared length is complete.
    pytest.param("gzip", [GZIPPED[:10], b"\xff" * 8], 100, "not valid gzip", id="gzip-corrupt"),
    pytest.param("gzip", [GZIPPED, b"garbage"], 100, "after the end", id="gzip-trailing"),
    pytest.param("deflate", [DEFLATED, b"\0"], 100, "after the end", id="deflate-trailing"),
]


@pytest.mark.parametrize(("coding", "parts", "missing", "message"), BROKEN_IN_PARTS)
async def test_a_broken_stream_arriving_in_parts_gets_a_json_400(
    start_server: ServerFactory, coding: str, parts: list[bytes], missing: int, message: str
) -> None:
    # Waiting for the body deadline would take longer than RawConnection waits for an answer.
    server = await start_server(body_timeout_s=3600)
    assert server.port is not None
    connection = await RawConnection.open(server.port)
    length = sum(map(len, parts)) + missing
    headers = {"Content-Encoding": coding, **JSON}
    await connection.send(request("POST", INFER, b"", headers, content_length=length))
    for part in parts:
        await asyncio.sleep(0.05)  # separate reads on the server, as over a slow link
        await connection.send(part)

    assert_json_error(await connection.response(), 400, message)


HUGE_HEADS = [
    pytest.param([PARTIAL_HEAD + b"a" * 40_000 + b"\r\n\r\n"], id="at-once"),
    pytest.param(  # lines each within aiohttp's own limits, too many bytes in all
        [PARTIAL_HEAD + b"v\r\n", *(b"X-%d: %s\r\n" % (n, b"a" * 2000) for n in range(20))],
        id="line-by-line",
    ),
    pytest.param([b"\r\n" * 20_000], id="empty-lines"),
]


@pytest.mark.parametrize("parts", HUGE_HEADS)
async def test_a_head_past_32_kib_gets_431(start_server: ServerFactory, parts: list[bytes]) -> None:
    server = await start_server()
    assert server.port is not None
    connection = await RawConnection.open(server.port)
    with contextlib.suppress(ConnectionError):  # the server stops reading once it has answered
        for part in parts:
            await connection.send(part)

    assert_json_error(await connection.response(), 431, "request head is larger than 32 KiB")
    assert await connection.closed() == b""


async def test_heads_under_32_kib_and_leading_empty_lines_are_served(
    start_server: ServerFactory,
) -> None:
    server = await start_server()
    assert server.port is not None
    connection = await RawConnection.open(server.port)
    big = "".join(f"X-{n}: {'a' * 1000}\r\n" for n in range(28)).encode()

    for data in (HEALTH.replace(b"\r\n\r\n", b"\r\n" + big + b"\r\n"), b"\r\n\r\n" + HEALTH):
        assert (await answer(connection, data)).status == 200
