"""Slow and greedy clients on raw sockets against a real server: heads and bodies that stop,
connections past the cap, responses nobody reads, bodies past the memory budget."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

from edge_agent.runtime import ModelRepository, load_model
from tests.agent.conftest import OPSET, ServerFactory, ort_outputs
from tests.support.models import ModelSet
from tests.support.rawhttp import (
    HEALTH,
    PARTIAL_HEAD,
    RawConnection,
    answer,
    assert_json_error,
    chunk,
    request,
)

CAP = 20
OVERFLOW = 8  # max(8, CAP // 8): connections past the cap that still get their 503
MiB = 1024 * 1024
INFER = "/v2/models/classifier/infer"
JSON = {"Content-Type": "application/json"}
TOKEN = "hostile-test-token-0123456789"  # noqa: S105 - a test token


def infer_body(rows: np.ndarray[Any, Any], padding: int = 0) -> bytes:
    """A JSON inference request for the classifier, padded with spaces to a size."""
    tensor = {"name": "X", "datatype": "FP32", "shape": list(rows.shape), "data": rows.tolist()}
    return json.dumps({"inputs": [tensor]}).encode() + b" " * padding


async def server_state(connection: RawConnection) -> dict[str, Any]:
    """The `server` part of /v1/status, asked on `connection` (which counts as open)."""
    state: dict[str, Any] = (await answer(connection, request("GET", "/v1/status"))).json()
    return state["server"]


async def until(probe: RawConnection, key: str, value: int) -> None:
    """Wait until /v1/status reports `key` = `value` (a liveness bound, not a timing one)."""
    async with asyncio.timeout(60):
        while (await server_state(probe))[key] != value:  # noqa: ASYNC110 - the server's state
            await asyncio.sleep(0.02)


async def opened(port: int, data: bytes, count: int) -> list[RawConnection]:
    """`count` connections that have each sent `data` and then nothing."""
    connections = []
    for _ in range(count):
        connection = await RawConnection.open(port)
        await connection.send(data)
        connections.append(connection)
    return connections


async def test_partial_heads_past_the_cap_leave_served_connections_answering(
    start_server: ServerFactory, onnx_models: ModelSet
) -> None:
    server = await start_server(max_connections=CAP, header_timeout_s=300, idle_timeout_s=300)
    assert server.port is not None
    rows = onnx_models.classifier.X_eval[:3]
    health = await RawConnection.open(server.port)
    inference = await RawConnection.open(server.port)
    assert (await answer(health, HEALTH)).status == 200

    attack = await opened(server.port, PARTIAL_HEAD, CAP - 2)
    await until(health, "connections", CAP)
    # Over the cap: answered 503 as soon as the head is in, then closed.
    late = await RawConnection.open(server.port)
    refused = await answer(late, HEALTH)
    assert_json_error(refused, 503, "server.max_connections")
    assert refused.headers["retry-after"] == "1"
    assert await late.closed() == b""
    # Past the overflow as well: closed at once, without an answer.
    attack += await opened(server.port, PARTIAL_HEAD, OVERFLOW)
    await until(health, "connections", CAP + OVERFLOW)
    dropped = await RawConnection.open(server.port)
    await dropped.send(HEALTH)
    assert await dropped.response() is None

    # The connections being served still are, inference included.
    assert (await answer(health, HEALTH)).status == 200
    reply = await answer(inference, request("POST", INFER, infer_body(rows), JSON))
    assert reply.status == 200, reply
    expected = ort_outputs(onnx_models.classifier.onnx_path, {"X": rows})["probabilities"]
    (probabilities,) = [o for o in reply.json()["outputs"] if o["name"] == "probabilities"]
    np.testing.assert_allclose(probabilities["data"], expected.reshape(-1), rtol=1e-5)

    for connection in attack:
        connection.close()
    await until(health, "connections", 2)
    assert (await answer(await RawConnection.open(server.port), HEALTH)).status == 200


async def test_a_head_that_stops_is_answered_408_and_closed(start_server: ServerFactory) -> None:
    server = await start_server(header_timeout_s=2)
    assert server.port is not None
    partial = await opened(server.port, PARTIAL_HEAD, 10)
    silent = await RawConnection.open(server.port)  # connects and asks nothing

    for connection in partial:
        assert_json_error(await connection.response(), 408, "request head did not arrive")
        assert await connection.closed() == b""
    assert await silent.response() is None
    probe = await RawConnection.open(server.port)
    await until(probe, "connections", 1)


async def test_a_kept_alive_connection_left_idle_is_closed(start_server: ServerFactory) -> None:
    server = await start_server(idle_timeout_s=3)
    assert server.port is not None
    connection = await RawConnection.open(server.port)

    assert (await answer(connection, HEALTH)).status == 200
    assert (await answer(connection, HEALTH)).status == 200  # kept alive

    assert await connection.response() is None  # then closed, with nothing sent


BODY_CUT_SHORT = [
    pytest.param(request("POST", INFER, b'{"inputs": [', JSON, content_length=1000), id="length"),
    pytest.param(
        request("POST", INFER, chunk(b'{"inputs": ['), {"Transfer-Encoding": "chunked"}),
        id="chunked",
    ),
    pytest.param(
        request("POST", INFER, b"\x1f\x8b\x08", {"Content-Encoding": "gzip"}, content_length=90),
        id="gzip",
    ),
]


@pytest.mark.parametrize("data", BODY_CUT_SHORT)
async def test_a_body_that_stops_is_answered_408_and_closed(
    start_server: ServerFactory, data: bytes
) -> None:
    server = await start_server(body_timeout_s=1)
    assert server.port is not None
    connection = await RawConnection.open(server.port)
    await connection.send(data)

    reply = await connection.response()

    assert_json_error(reply, 408, "server.body_timeout_s")
    assert reply is not None
    assert reply.headers["connection"] == "close"
    assert await connection.closed() == b""
    probe = await RawConnection.open(server.port)
    state = await server_state(probe)
    assert (state["connections"], state["buffered_body_bytes"]) == (1, 0)


@pytest.fixture(scope="module")
def expand_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """x FP32[N, 1] -> y FP32[N, 1048576]: a tiny request with a 4 MiB answer per row."""
    shape = helper.make_tensor("width", TensorProto.INT64, [2], [1, 1 << 20])
    graph = helper.make_graph(
        [helper.make_node("Expand", ["x", "width"], ["y"])],
        "expand",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1 << 20])],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    path = tmp_path_factory.mktemp("onnx-expand") / "expand.onnx"
    path.write_bytes(model.SerializeToString())
    return path


async def test_a_client_that_reads_nothing_of_its_answer_is_dropped(
    start_server: ServerFactory, expand_model: Path
) -> None:
    repository = ModelRepository()
    repository.swap("expand", load_model(expand_model, name="expand", version=1))
    server = await start_server(repository, send_timeout_s=1, max_batch_size=1)
    assert server.port is not None
    body = json.dumps(
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [4, 1], "data": [1, 2, 3, 4]}],
            "parameters": {"binary_data_output": True},
        }
    ).encode()
    reader = await RawConnection.open(server.port, receive_buffer=4096)
    await reader.send(request("POST", "/v2/models/expand/infer", body, JSON))
    probe = await RawConnection.open(server.port)

    await until(probe, "connections", 1)  # the reader is gone, having read nothing

    received = await reader.closed()
    head, _, sent = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert len(sent) < 16 * MiB  # 4 rows of 4 MiB, cut short
    repository.close()


async def test_bodies_past_the_budget_get_503_and_the_budget_comes_back(
    start_server: ServerFactory, onnx_models: ModelSet
) -> None:
    server = await start_server(max_body_bytes=MiB, max_buffered_body_bytes=2 * MiB)
    assert server.port is not None
    rows = onnx_models.classifier.X_eval[:2]
    full = infer_body(rows, padding=MiB - len(infer_body(rows)))
    half = request("POST", INFER, full[: MiB // 2], JSON, content_length=MiB)
    holders = await opened(server.port, half, 2)
    probe = await RawConnection.open(server.port)
    await until(probe, "buffered_body_bytes", 2 * MiB)  # both declared a whole MiB

    small_request = request("POST", INFER, infer_body(rows), JSON)
    refused = await answer(await RawConnection.open(server.port), small_request)
    assert_json_error(refused, 503, "server.max_buffered_body_mb")
    assert refused.headers["retry-after"] == "1"
    # A declared length that does not fit is refused before any of the body is sent.
    head_only = await RawConnection.open(server.port)
    early = await answer(head_only, request("POST", INFER, b"", JSON, content_length=MiB))
    assert_json_error(early, 503, "server.max_buffered_body_mb")

    for holder in holders:  # the bodies complete: answered, and their memory given back
        await holder.send(full[MiB // 2 :])
        reply = await holder.response()
        assert reply is not None
        assert reply.status == 200, reply
    await until(probe, "buffered_body_bytes", 0)
    again = await answer(small_again := await RawConnection.open(server.port), small_request)
    assert again.status == 200, again
    small_again.close()


async def test_a_chunked_body_is_refused_when_it_grows_past_the_budget(
    start_server: ServerFactory,
) -> None:
    server = await start_server(max_body_bytes=MiB, max_buffered_body_bytes=MiB + MiB // 2)
    assert server.port is not None
    chunked = {"Transfer-Encoding": "chunked", **JSON}
    holder = await RawConnection.open(server.port)
    await holder.send(request("POST", INFER, chunk(b" " * MiB), chunked))
    probe = await RawConnection.open(server.port)
    await until(probe, "buffered_body_bytes", MiB)

    grower = await RawConnection.open(server.port)
    await grower.send(request("POST", INFER, b"", chunked))
    for _ in range(9):  # 64 KiB at a time: past half a MiB the budget is spent
        await grower.send(chunk(b" " * (64 * 1024)))
    refused = await grower.response()

    assert_json_error(refused, 503, "server.max_buffered_body_mb")
    holder.close()
    await until(probe, "buffered_body_bytes", 0)


async def test_the_rest_of_an_unread_body_is_not_taken_for_a_head(
    start_server: ServerFactory,
) -> None:
    server = await start_server(token=TOKEN, header_timeout_s=1)
    assert server.port is not None
    connection = await RawConnection.open(server.port)
    await connection.send(request("POST", INFER, b" " * 65536, JSON, content_length=MiB))
    refused = await connection.response()  # no token: answered before the body is read
    assert_json_error(refused, 401, "Authorization")

    await connection.send(b" " * (100 * 1024))  # more than a head may hold
    await asyncio.sleep(1.5)  # longer than a head may take

    assert await connection.closed() == b""  # nothing after the one answer: no 431, no 408


async def test_the_unix_socket_has_the_same_guards(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    path = tmp_path / "agent.sock"
    await start_server(unix_socket=path, header_timeout_s=1, max_connections=1)
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(PARTIAL_HEAD)
    second, second_writer = await asyncio.open_unix_connection(str(path))
    second_writer.write(HEALTH)

    slow = RawConnection(reader, writer)
    past_the_cap = RawConnection(second, second_writer)

    assert_json_error(await past_the_cap.response(), 503, "server.max_connections")
    assert_json_error(await slow.response(), 408, "request head did not arrive")
