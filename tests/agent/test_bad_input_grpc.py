"""The bad requests of test_bad_input.py over gRPC: the same answer, as a gRPC status."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import grpc
import numpy as np
import pytest
from aiohttp import ClientSession

from edge_agent.server import InferenceServer
from edge_agent.server.grpc import inference_pb2 as pb
from edge_agent.server.grpc.codec import CONTENTS_FIELD
from edge_agent.server.settings import GrpcConfig
from tests.agent.bad_input_cases import (
    AUTH,
    CASES,
    FEATURES,
    MAX_BODY,
    MAX_ROWS,
    NAN_BYTES,
    ROW,
    ROW_BYTES,
    TOKEN,
    Case,
)
from tests.agent.conftest import Gate, ServerFactory, eventually

GRPC_CODE_OF_STATUS = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


def _typed_values(data: Any, datatype: str) -> list[Any] | None:
    """The flat values of JSON `data` if a typed contents field can hold them as they are."""
    try:
        flat = np.array(data, dtype=object).reshape(-1).tolist()
    except ValueError:  # ragged
        return None
    if datatype == "BOOL":
        wanted: tuple[type, ...] = (bool,)
    elif datatype == "BYTES":
        wanted = (str,)
    else:
        wanted = (int, float)
    if not all(isinstance(v, wanted) and (datatype == "BOOL" or type(v) is not bool) for v in flat):
        return None
    return [v.encode() for v in flat] if datatype == "BYTES" else flat


def _set_parameter(params: Any, key: str, value: Any) -> None:
    field = {bool: "bool_param", int: "int64_param", str: "string_param"}[type(value)]
    setattr(params[key], field, value)


def _twin_input(request: pb.ModelInferRequest, raw: Any) -> bool:
    if not isinstance(raw, dict) or "data" not in raw or not isinstance(raw["data"], list):
        return False
    tensor = request.inputs.add(name=raw["name"], datatype=raw["datatype"], shape=raw["shape"])
    field = CONTENTS_FIELD.get(raw["datatype"])
    if field is None:
        return True  # the datatype itself is what is wrong
    values = _typed_values(raw["data"], raw["datatype"])
    if values is None:
        return False
    getattr(tensor.contents, field).extend(values)
    return True


def grpc_twin(case: Case) -> pb.ModelInferRequest | None:
    """The ModelInferRequest saying what the HTTP case says, when gRPC can say it."""
    match = INFER_PATH.fullmatch(case.path)
    extra = {k for k in case.headers if k != "Authorization"}
    if case.method != "POST" or match is None or extra or case.status == 413:
        return None  # a body limit is about the HTTP body's bytes: its own gRPC test below
    try:
        obj = json.loads(case.data)
    except (ValueError, RecursionError):
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("id", ""), str) or "instances" in obj:
        return None  # gRPC has no `instances` body
    request = pb.ModelInferRequest(model_name=match[1], model_version=match[2] or "")
    request.id = obj.get("id", "")
    if not all(_twin_input(request, raw) for raw in obj.get("inputs", [])):
        return None
    for output in obj.get("outputs", []):
        added = request.outputs.add(name=output["name"])
        for key, value in output.get("parameters", {}).items():
            _set_parameter(added.parameters, key, value)
    return request


TWINS = [(case, twin) for case in CASES if (twin := grpc_twin(case)) is not None]


async def _grpc_call(
    server: InferenceServer, request: pb.ModelInferRequest, metadata: tuple[tuple[str, str], ...]
) -> grpc.aio.AioRpcError:
    assert server.grpc is not None
    async with grpc.aio.insecure_channel(server.grpc.target) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call(request, metadata=metadata)
    return caught.value


@pytest.fixture
async def strict_grpc_server(start_server: ServerFactory) -> InferenceServer:
    """`strict_server`'s settings, serving gRPC too."""
    return await start_server(
        token=TOKEN, max_body_bytes=MAX_BODY, max_request_batch=MAX_ROWS, grpc=GrpcConfig(port=0)
    )


def test_most_cases_have_a_grpc_twin() -> None:
    assert len(TWINS) >= 20, [case.id for case, _ in TWINS]


@pytest.mark.parametrize(("case", "twin"), TWINS, ids=[case.id for case, _ in TWINS])
async def test_grpc_gets_the_same_answer_as_http(
    strict_grpc_server: InferenceServer, raw_http: ClientSession, case: Case, twin: Any
) -> None:
    headers = {"Content-Type": "application/json", **(AUTH if case.auth else {}), **case.headers}
    async with raw_http.request(
        case.method, strict_grpc_server.url + case.path, data=case.data, headers=headers
    ) as response:
        status, payload = response.status, await response.json()
    given = case.headers.get("Authorization", AUTH["Authorization"] if case.auth else None)
    metadata = () if given is None else (("authorization", given),)

    error = await _grpc_call(strict_grpc_server, twin, metadata)

    assert status == case.status, payload
    assert error.code() == GRPC_CODE_OF_STATUS[status], error.details()
    assert error.details() == payload["error"]


def _raw_request(*blobs: bytes, datatype: str = "FP32", shape: list[int] | None = None) -> Any:
    request = pb.ModelInferRequest(model_name="classifier")
    request.inputs.add(name="X", datatype=datatype, shape=shape or [1, FEATURES])
    request.raw_input_contents.extend(blobs)
    return request


def _typed_in(field: str, values: list[Any], datatype: str = "FP32") -> Any:
    request = pb.ModelInferRequest(model_name="classifier")
    tensor = request.inputs.add(name="X", datatype=datatype, shape=[1, FEATURES])
    getattr(tensor.contents, field).extend(values)
    return request


def _both_contents() -> Any:
    request = _raw_request(ROW_BYTES)
    request.inputs[0].contents.fp32_contents.extend(ROW)
    return request


GRPC_ONLY = [
    ("raw-count", _raw_request(ROW_BYTES, ROW_BYTES), "raw_input_contents has 2 entries"),
    ("raw-size", _raw_request(ROW_BYTES[:100]), "needs 128"),
    ("raw-nan", _raw_request(NAN_BYTES), "NaN and infinite"),
    ("raw-and-contents", _both_contents(), "has both contents and raw_input_contents"),
    ("wrong-field", _typed_in("fp64_contents", ROW), "goes in contents.fp32_contents"),
    ("fp16-typed", _typed_in("fp32_contents", ROW, "FP16"), "no typed contents"),
    ("typed-count", _typed_in("fp32_contents", ROW[:5]), "has 5 elements"),
    ("no-inputs", pb.ModelInferRequest(model_name="classifier"), "'inputs' must be"),
]


@pytest.mark.parametrize(
    ("request_", "message"), [c[1:] for c in GRPC_ONLY], ids=[c[0] for c in GRPC_ONLY]
)
async def test_grpc_only_mistakes_are_invalid_argument(
    strict_grpc_server: InferenceServer, request_: Any, message: str
) -> None:
    error = await _grpc_call(
        strict_grpc_server, request_, (("authorization", AUTH["Authorization"]),)
    )

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in error.details()


async def test_grpc_message_over_the_body_limit_is_resource_exhausted(
    strict_grpc_server: InferenceServer,
) -> None:
    big = _raw_request(bytes(MAX_BODY + 1))

    error = await _grpc_call(strict_grpc_server, big, (("authorization", AUTH["Authorization"]),))

    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_grpc_overload_is_unavailable_with_retry_info(start_server: ServerFactory) -> None:
    gate = Gate()  # the one inference thread is busy until opened
    try:
        server = await start_server(
            max_queue_size=1, retry_after_s=3, executor=gate.executor, grpc=GrpcConfig(port=0)
        )
        assert server.grpc is not None
        async with grpc.aio.insecure_channel(server.grpc.target) as channel:
            call = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=pb.ModelInferRequest.SerializeToString,
                response_deserializer=pb.ModelInferResponse.FromString,
            )
            model = server.dataplane.model("classifier")  # leased, then acquired for the run: 2
            running = asyncio.ensure_future(call(_raw_request(ROW_BYTES)))  # runs, held by the gate
            await eventually(lambda: model.in_flight == 2, "the first request runs")
            queued = asyncio.ensure_future(call(_raw_request(ROW_BYTES)))  # fills the queue
            depth = lambda: server.dataplane.status()["models"][0]["queue_depth"]  # noqa: E731
            await eventually(lambda: depth() == 1, "the second request queues")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(_raw_request(ROW_BYTES))
            gate.open()
            await asyncio.gather(running, queued)
    finally:
        gate.close()

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "retry later" in caught.value.details()
    trailers = dict(caught.value.trailing_metadata() or ())
    assert trailers["retry-after"] == "3"
    assert trailers["grpc-retry-pushback-ms"] == "3000"
