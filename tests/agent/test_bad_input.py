"""Table-driven rejections: every kind of bad request gets its 4xx and a message, never a 500."""

from __future__ import annotations

import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession

from edge_agent.runtime import ModelRepository, load_model
from edge_agent.server import InferenceServer
from tests.agent.bad_input_cases import (
    AUTH,
    CASES,
    MAX_BODY,
    MAX_ROWS,
    ROW,
    TOKEN,
    Case,
    body,
    tensor,
)
from tests.agent.conftest import ServerFactory, post


@pytest.fixture
async def strict_server(start_server: ServerFactory) -> InferenceServer:
    """Token required, small body and row limits."""
    return await start_server(token=TOKEN, max_body_bytes=MAX_BODY, max_request_batch=MAX_ROWS)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_bad_requests_get_their_4xx(
    strict_server: InferenceServer, raw_http: ClientSession, case: Case
) -> None:
    headers = {"Content-Type": "application/json", **(AUTH if case.auth else {}), **case.headers}

    async with raw_http.request(
        case.method, strict_server.url + case.path, data=case.data, headers=headers
    ) as response:
        status, payload = response.status, await response.json()

    assert status == case.status, payload
    assert set(payload) == {"error"}
    assert case.message in payload["error"]


async def test_missing_token_answer_names_the_scheme(
    strict_server: InferenceServer, raw_http: ClientSession
) -> None:
    reply = await post(raw_http, strict_server.url + "/v2/models/classifier/infer", data=body())

    assert reply.status == 401
    assert reply.headers["WWW-Authenticate"].startswith("Bearer")


async def test_chunked_oversize_body_is_refused_while_streaming(
    strict_server: InferenceServer, raw_http: ClientSession
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(MAX_BODY // 1024 + 2):
            yield b" " * 1024

    reply = await post(
        raw_http, strict_server.url + "/v2/models/classifier/infer", data=chunks(), headers=AUTH
    )

    assert reply.status == 413


async def test_nan_is_served_when_the_policy_allows_it(
    start_server: ServerFactory, raw_http: ClientSession
) -> None:
    server = await start_server(non_finite="allow")
    row = [float("nan"), *ROW[1:]]

    reply = await post(
        raw_http, server.url + "/v2/models/classifier/infer", data=body(tensor([row]))
    )

    assert reply.status == 200


def _kinds_request(first: dict[str, Any], blob: bytes) -> tuple[bytes, dict[str, str]]:
    """A kinds-model request whose first input is binary, the others JSON."""
    others = [
        {"name": "text", "datatype": "BYTES", "shape": [1], "data": ["a"]},
        {"name": "flag", "datatype": "BOOL", "shape": [1], "data": [True]},
        {"name": "half", "datatype": "FP16", "shape": [1, 2], "data": [1, 2]},
    ]
    first = {**first, "parameters": {"binary_data_size": len(blob)}}
    inputs = [first, *(t for t in others if t["name"] != first["name"])]
    header = json.dumps({"inputs": inputs}).encode()
    return header + blob, {"Inference-Header-Content-Length": str(len(header))}


BYTES_INPUT = {"name": "text", "datatype": "BYTES", "shape": [1]}
BINARY_ELEMENT_CASES = [
    (BYTES_INPUT, b"\x09\x00\x00\x00abc", "runs past the data"),
    (BYTES_INPUT, b"\x03\x00\x00\x00\xff\xfe\xfd", "not UTF-8"),
    (BYTES_INPUT, b"\x01\x00", "ends after 0 of 1"),
    (BYTES_INPUT, b"\x01\x00\x00\x00ab", "take 5"),
    ({"name": "flag", "datatype": "BOOL", "shape": [1]}, struct.pack("<B", 2), "0 or 1"),
]


async def test_bad_binary_elements(
    start_server: ServerFactory, raw_http: ClientSession, kinds_model: Path
) -> None:
    repo = ModelRepository()
    repo.swap("kinds", load_model(kinds_model, name="kinds", version=1))
    server = await start_server(repo)

    for first, blob, message in BINARY_ELEMENT_CASES:
        data, headers = _kinds_request(first, blob)

        reply = await post(
            raw_http, server.url + "/v2/models/kinds/infer", data=data, headers=headers
        )

        assert reply.status == 400, (blob, reply.json())
        assert message in reply.json()["error"]


MIXED_KINDS = [
    ({"text": "a", "flag": 1, "half": [1, 2]}, "input 'flag': BOOL data must be JSON true/false"),
    (
        {"text": "a", "flag": True, "half": [1, True]},
        "input 'half': FP16 data must be JSON numbers, not true/false",
    ),
    ({"text": True, "flag": True, "half": [1, 2]}, "input 'text': BYTES data must be JSON strings"),
]


@pytest.mark.parametrize(("instance", "message"), MIXED_KINDS)
async def test_the_simple_form_keeps_booleans_and_numbers_apart(
    start_server: ServerFactory,
    raw_http: ClientSession,
    kinds_model: Path,
    instance: dict[str, Any],
    message: str,
) -> None:
    repo = ModelRepository()
    repo.swap("kinds", load_model(kinds_model, name="kinds", version=1))
    server = await start_server(repo)
    good = {"text": "b", "flag": False, "half": [3, 4]}

    reply = await post(
        raw_http, server.url + "/v1/models/kinds:predict", json={"instances": [good, instance]}
    )

    assert reply.status == 400, reply.json()
    assert reply.json() == {"error": message}
