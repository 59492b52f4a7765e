"""The fast lane answers plain inference requests as aiohttp's route would, and leaves every
other request to aiohttp.

Each parity test sends a request twice on raw sockets to a real server: once plain (the fast
lane's) and once with a second `Accept` header, which sends it through aiohttp, and compares
what comes back: status, body, and the headers a client reads.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib
from typing import Any

import numpy as np
import pytest

from edge_agent.server import InferenceServer
from edge_agent.server.fastlane import PlainRequest, recognize
from tests.agent.conftest import Gate, ServerFactory, eventually
from tests.support.models import ModelSet
from tests.support.rawhttp import RawConnection, RawResponse, answer, chunk, request

INFER = "/v2/models/classifier/infer"
JSON = {"Content-Type": "application/json"}
TOKEN = "fast-lane-test-token-0123456789"  # noqa: S105 - a test token
SLOW_LANE = b"Accept: */*\r\n"  # a header given twice: the fast lane leaves the request alone
FEATURES = 32  # the classifier's input width
KEPT = ("content-type", "content-length", "retry-after", "www-authenticate", "connection")


def port_of(server: InferenceServer) -> int:
    assert server.port is not None
    return server.port


def body_for(rows: np.ndarray[Any, Any], **extra: Any) -> bytes:
    tensor = {"name": "X", "datatype": "FP32", "shape": list(rows.shape), "data": rows.tolist()}
    return json.dumps({"inputs": [tensor], **extra}).encode()


def through_aiohttp(data: bytes) -> bytes:
    """The same request with `Accept` twice, which only aiohttp reads."""
    head, _, body = data.partition(b"\r\n\r\n")
    return head + b"\r\n" + SLOW_LANE + SLOW_LANE + b"\r\n" + body


def seen(reply: RawResponse) -> tuple[int, dict[str, str], Any]:
    headers = {k: v for k, v in reply.headers.items() if k in KEPT}
    try:
        body: Any = reply.json()
    except ValueError:
        body = reply.body
    return reply.status, headers, body


async def both_lanes(port: int, data: bytes, answered: Any) -> tuple[RawResponse, RawResponse]:
    """The reply of the fast lane and of aiohttp to the same request (checked by the count)."""
    before = answered()
    fast = await answer(await RawConnection.open(port), data)
    assert answered() == before + 1, "the plain request took the fast lane"
    slow = await answer(await RawConnection.open(port), through_aiohttp(data))
    assert answered() == before + 1, "the request with a header twice went to aiohttp"
    return fast, slow


def binary_body() -> tuple[bytes, dict[str, str]]:
    header = json.dumps({
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [1, FEATURES],
                    "parameters": {"binary_data_size": 4 * FEATURES}}],
        "parameters": {"binary_data_output": True},
    }).encode()  # fmt: skip
    blob = np.zeros(FEATURES, "<f4").tobytes()
    return header + blob, {"Inference-Header-Content-Length": str(len(header))}


NAN_ROW = ",".join(["NaN"] + ["0"] * (FEATURES - 1))
CASES = {
    "answer": (body_for(np.zeros((2, FEATURES))), {}),
    "bad json": (b'{"inputs": [', {}),
    "wrong input": (json.dumps({"inputs": [{"name": "nope"}]}).encode(), {}),
    "non-finite": (
        f'{{"inputs":[{{"name":"X","datatype":"FP32","shape":[1,{FEATURES}],'
        f'"data":[{NAN_ROW}]}}]}}'.encode(),
        {},
    ),
    "binary": binary_body(),
    "header length too long": (
        body_for(np.zeros((1, FEATURES))),
        {"Inference-Header-Content-Length": "99999"},
    ),
    "routing header": (body_for(np.zeros((1, FEATURES))), {"Experiment-Key": "user-7"}),
    "bad routing header": (body_for(np.zeros((1, FEATURES))), {"Experiment-Key": "x" * 300}),
}


@pytest.mark.parametrize("case", CASES)
async def test_both_lanes_answer_alike(server: InferenceServer, case: str) -> None:
    body, headers = CASES[case]
    data = request("POST", INFER, body, {**JSON, **headers})

    fast, slow = await both_lanes(port_of(server), data, lambda: server.fast_lane.answered)

    assert seen(fast) == seen(slow)


@pytest.mark.parametrize(
    "path", ["/v2/models/nope/infer", "/v2/models/classifier/versions/9/infer"]
)
async def test_unknown_models_and_versions_are_404_in_both_lanes(
    server: InferenceServer, path: str
) -> None:
    data = request("POST", path, body_for(np.zeros((1, FEATURES))), JSON)

    fast, slow = await both_lanes(port_of(server), data, lambda: server.fast_lane.answered)

    assert fast.status == 404
    assert seen(fast) == seen(slow)


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", "Basic abc", f"Bearer {TOKEN}"])
async def test_the_token_is_checked_in_both_lanes(
    start_server: ServerFactory, authorization: str | None
) -> None:
    server = await start_server(token=TOKEN)
    headers = {**JSON, **({} if authorization is None else {"Authorization": authorization})}
    data = request("POST", INFER, body_for(np.zeros((1, FEATURES))), headers)

    fast, slow = await both_lanes(port_of(server), data, lambda: server.fast_lane.answered)

    assert fast.status == (200 if authorization == f"Bearer {TOKEN}" else 401)
    assert seen(fast) == seen(slow)


@pytest.mark.parametrize("coding", ["gzip", "deflate"])
async def test_large_answers_are_compressed_when_the_client_accepts_it(
    server: InferenceServer, coding: str
) -> None:
    rows = np.random.default_rng(0).normal(size=(64, FEATURES))
    plain = request("POST", INFER, body_for(rows), JSON)
    data = request("POST", INFER, body_for(rows), {**JSON, "Accept-Encoding": coding})

    fast, slow = await both_lanes(port_of(server), data, lambda: server.fast_lane.answered)
    uncompressed = await answer(await RawConnection.open(port_of(server)), plain)

    assert fast.headers["content-encoding"] == slow.headers["content-encoding"] == coding
    unpack = gzip.decompress if coding == "gzip" else zlib.decompress
    assert json.loads(unpack(fast.body)) == uncompressed.json()


async def test_a_full_body_budget_is_503_with_retry_after(start_server: ServerFactory) -> None:
    server = await start_server(max_body_bytes=4096, max_buffered_body_bytes=4096)
    blocker = await RawConnection.open(port_of(server))  # declares 4000 bytes and sends none
    await blocker.send(request("POST", INFER, b"", JSON, content_length=4000))
    probe = await RawConnection.open(port_of(server))

    def held() -> int:
        return int(server.dataplane.status()["server"]["buffered_body_bytes"])

    await eventually(lambda: held() == 4000, "the blocker's body reserved")
    body = body_for(np.zeros((1, FEATURES))) + b" " * 200
    reply = await answer(probe, request("POST", INFER, body, JSON))

    assert reply.status == 503
    assert "retry-after" in reply.headers
    assert "server.max_buffered_body_mb" in reply.json()["error"]
    assert server.fast_lane.answered == 1


async def test_answers_on_one_connection_keep_their_order(server: InferenceServer) -> None:
    connection = await RawConnection.open(port_of(server))
    bodies = [body_for(np.full((1, FEATURES), float(i))) for i in range(6)]
    plain = [request("POST", INFER, b, JSON) for b in bodies]

    # Pipelined: all in one write (aiohttp's), then one by one with no wait (the fast lane's
    # while it answers, queued behind it).
    await connection.send(b"".join(plain[:3]))
    for data in plain[3:]:
        connection.writer.write(data)
    replies = [await connection.response() for _ in plain]

    assert [r.status for r in replies if r] == [200] * 6
    expected = [(await answer(await RawConnection.open(port_of(server)), d)).json() for d in plain]
    assert [r.json() for r in replies if r] == expected


async def test_a_body_that_follows_its_head_is_answered_in_either_lane(
    server: InferenceServer,
) -> None:
    data = request("POST", INFER, body_for(np.zeros((1, FEATURES))), JSON)
    head, body = data[: len(data) - 10], data[len(data) - 10 :]
    for pause_s in (0.0, 0.01, 0.3):  # within the hold, and past it (then aiohttp reads it)
        connection = await RawConnection.open(port_of(server))
        await connection.send(head)
        await asyncio.sleep(pause_s)
        await connection.send(body)
        reply = await connection.response()
        assert reply is not None, pause_s
        assert reply.status == 200, pause_s


async def test_connection_close_is_honoured(server: InferenceServer) -> None:
    connection = await RawConnection.open(port_of(server))
    data = request(
        "POST", INFER, body_for(np.zeros((1, FEATURES))), {**JSON, "Connection": "close"}
    )

    reply = await answer(connection, data)

    assert reply.status == 200
    assert reply.headers["connection"] == "close"
    assert await connection.closed() == b""


async def test_an_idle_connection_is_closed_after_fast_answers(start_server: ServerFactory) -> None:
    server = await start_server(idle_timeout_s=1)
    connection = await RawConnection.open(port_of(server))
    data = request("POST", INFER, body_for(np.zeros((1, FEATURES))), JSON)
    for _ in range(3):
        assert (await answer(connection, data)).status == 200

    assert await connection.response() is None  # closed, with nothing sent


async def test_fast_answers_are_counted_in_the_metrics(server: InferenceServer) -> None:
    data = request("POST", INFER, body_for(np.zeros((1, FEATURES))), JSON)
    for _ in range(3):
        await answer(await RawConnection.open(port_of(server)), data)
    await answer(await RawConnection.open(port_of(server)), request("POST", INFER, b"[", JSON))

    text = (
        await answer(await RawConnection.open(port_of(server)), request("GET", "/metrics"))
    ).body

    lines = [line for line in text.decode().splitlines() if "requests_total{" in line]
    counts = {line.split("status=")[1].split('"')[1]: float(line.split()[-1]) for line in lines
              if 'model="classifier"' in line}  # fmt: skip
    assert counts == {"200": 3.0, "400": 1.0}


async def test_a_drain_lets_a_fast_answer_in_progress_go_out(
    start_server: ServerFactory, gate: Gate
) -> None:
    server = await start_server(executor=gate.executor)
    connection = await RawConnection.open(port_of(server))
    await connection.send(request("POST", INFER, body_for(np.zeros((1, FEATURES))), JSON))
    await eventually(lambda: server.fast_lane.answered == 1, "the request taken")

    draining = asyncio.create_task(server.drain_and_stop())
    await asyncio.sleep(0.1)
    gate.open()
    reply = await connection.response()
    await draining

    assert reply is not None
    assert reply.status == 200


PLAIN = request("POST", INFER, b"{}", JSON)
NOT_PLAIN = {
    "HTTP/1.0": PLAIN.replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    "lower-case method": PLAIN.replace(b"POST", b"post", 1),
    "query": PLAIN.replace(b"/infer ", b"/infer?x=1 ", 1),
    "percent-encoded": PLAIN.replace(b"classifier", b"classi%66ier", 1),
    "another route": PLAIN.replace(b"/infer ", b"/feedback ", 1),
    "empty line first": b"\r\n" + PLAIN,
    "chunked": request("POST", INFER, chunk(b"{}") + chunk(b""), {"Transfer-Encoding": "chunked"}),
    "gzip": request("POST", INFER, gzip.compress(b"{}"), {"Content-Encoding": "gzip"}),
    "expect": request("POST", INFER, b"{}", {"Expect": "100-continue"}),
    "upgrade": request("POST", INFER, b"{}", {"Upgrade": "websocket"}),
    "header twice": through_aiohttp(PLAIN),
    "length twice": PLAIN.replace(b"Content-Length: 2", b"Content-Length: 2\r\nContent-Length: 2"),
    "signed length": PLAIN.replace(b"Content-Length: 2", b"Content-Length: +2"),
    "no length": request("POST", INFER, b"", JSON),
    "folded header": PLAIN.replace(b"Host: agent", b"Host: agent\r\n more"),
    "non-ASCII value": PLAIN.replace(b"Host: agent", b"Host: ag\xc3\xa9nt"),
    "space before colon": PLAIN.replace(b"Host: agent", b"Host : agent"),
    "bare LF": PLAIN.replace(b"Host: agent\r\n", b"Host: agent\n"),
    "other media type": PLAIN.replace(b"application/json", b"text/plain"),
    "odd connection": PLAIN.replace(b"Host: agent", b"Host: agent\r\nConnection: upgrade"),
    "pipelined": PLAIN + PLAIN,
    "too large": request("POST", INFER, b"", JSON, content_length=10_000),
}


@pytest.mark.parametrize("case", NOT_PLAIN)
def test_what_is_not_plain_goes_to_aiohttp(case: str) -> None:
    found = recognize(NOT_PLAIN[case], max_body_bytes=4096)

    assert found is None


def test_a_plain_request_is_read_whole_or_waited_for() -> None:
    found = recognize(PLAIN, max_body_bytes=4096)
    assert isinstance(found, PlainRequest)
    assert (found.model, found.version, found.body, found.close) == (
        "classifier",
        None,
        b"{}",
        False,
    )
    versioned = recognize(PLAIN.replace(b"/infer", b"/versions/3/infer", 1), 4096)
    assert isinstance(versioned, PlainRequest)
    assert versioned.version == "3"

    assert recognize(PLAIN[:-1], 4096) == 1  # one byte of the body still to come
    assert recognize(PLAIN[:20], 4096) is None  # no whole head: aiohttp's


def test_the_test_bodies_name_the_classifier_input(onnx_models: ModelSet) -> None:
    model = onnx_models.classifier
    assert (model.input_name, model.n_features) == ("X", FEATURES)


async def test_a_request_sent_during_a_fast_answer_waits_for_it(
    start_server: ServerFactory, gate: Gate
) -> None:
    server = await start_server(executor=gate.executor)
    connection = await RawConnection.open(port_of(server))
    first, second = (
        request("POST", INFER, body_for(np.full((1, FEATURES), v)), JSON) for v in (0.0, 5.0)
    )
    await connection.send(first)
    await eventually(lambda: server.fast_lane.answered == 1, "the first request taken")
    await connection.send(second)  # arrives while the first is being answered
    await asyncio.sleep(0.05)
    gate.open()

    replies = [await connection.response(), await connection.response()]

    assert server.fast_lane.answered == 2
    expected = [(await answer(await RawConnection.open(port_of(server)), d)).json()
                for d in (first, second)]  # fmt: skip
    assert [r.json() for r in replies if r is not None] == expected
