"""Table-driven rejections: every kind of bad request gets its 4xx and a message, never a 500."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import struct
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from aiohttp import ClientSession

from edge_agent.runtime import ModelRepository, load_model
from edge_agent.server import InferenceServer
from edge_agent.server.grpc import inference_pb2 as pb
from edge_agent.server.grpc.codec import CONTENTS_FIELD
from edge_agent.server.settings import GrpcConfig
from tests.agent.conftest import Gate, ServerFactory, eventually, post

TOKEN = "test-token-0123456789abcdef"  # noqa: S105 - a test token
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 64 * 1024
MAX_ROWS = 8
FEATURES = 32  # the classifier's input: FP32 [-1, 32]
ROW = [0.25] * FEATURES


def tensor(
    data: Any = None, *, shape: list[int] | None = None, datatype: str = "FP32", name: str = "X"
) -> dict[str, Any]:
    """One classifier input; the default is a valid [1, 32] row."""
    return {
        "name": name,
        "datatype": datatype,
        "shape": [1, FEATURES] if shape is None else shape,
        "data": [ROW] if data is None else data,
    }


def body(*inputs: dict[str, Any], **extra: Any) -> bytes:
    """A JSON inference request."""
    return json.dumps({"inputs": list(inputs) or [tensor()], **extra}).encode()


def binary_body(
    chunks: list[bytes], sizes: list[int], *, header_length_delta: int = 0
) -> tuple[bytes, dict[str, str]]:
    """A binary-extension request with the given tensor bytes and declared sizes."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "X",
                    "datatype": "FP32",
                    "shape": [1, FEATURES],
                    "parameters": {"binary_data_size": size},
                }
                for size in sizes
            ]
        }
    ).encode()
    headers = {"Inference-Header-Content-Length": str(len(header) + header_length_delta)}
    return header + b"".join(chunks), headers


ROW_BYTES = np.full((1, FEATURES), 0.25, np.float32).tobytes()
NAN_BYTES = np.full((1, FEATURES), np.nan, np.float32).tobytes()


@dataclass(frozen=True)
class Case:
    """One bad request and the answer it must get."""

    id: str
    data: bytes
    status: int
    message: str  # a fragment the error message must contain
    path: str = "/v2/models/classifier/infer"
    headers: dict[str, str] = field(default_factory=dict)
    auth: bool = True
    method: str = "POST"


def _binary_case(
    id: str, chunks: list[bytes], sizes: list[int], message: str, delta: int = 0
) -> Case:
    data, headers = binary_body(chunks, sizes, header_length_delta=delta)
    return Case(id, data, 400, message, headers=headers)


GZIPPED = gzip.compress(body())
DEFLATED = zlib.compress(body())


def gzip_bomb(expanded: int) -> bytes:
    """A small gzip stream of `expanded` zero bytes, made without holding them."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MAX_BODY)
    parts = [compressor.compress(zeros) for _ in range(expanded // MAX_BODY)]
    return b"".join(parts) + compressor.flush()


def _encoded(id: str, data: bytes, encoding: str, status: int, message: str) -> Case:
    return Case(id, data, status, message, headers={"Content-Encoding": encoding})


ENCODING_CASES = [
    _encoded(
        "gzip-corrupt", GZIPPED[:12] + b"\xff" * 8 + GZIPPED[20:], "gzip", 400, "not valid gzip"
    ),
    _encoded("gzip-bad-crc", GZIPPED[:-8] + b"\0\0\0\0" + GZIPPED[-4:], "gzip", 400, "gzip"),
    _encoded("gzip-truncated", GZIPPED[:-3], "gzip", 400, "gzip body is truncated"),
    _encoded("gzip-only-a-header", GZIPPED[:10], "gzip", 400, "gzip body is truncated"),
    _encoded("gzip-trailing-garbage", GZIPPED + b"garbage", "gzip", 400, "after the end"),
    _encoded("gzip-empty", b"", "gzip", 400, "empty, which is not gzip"),
    _encoded("gzip-not-gzip", body(), "gzip", 400, "not valid gzip"),
    _encoded("gzip-bomb", gzip_bomb(64 * MAX_BODY), "gzip", 413, "exceeds"),
    _encoded("x-gzip-bomb", gzip_bomb(64 * MAX_BODY), "x-gzip", 413, "exceeds"),
    _encoded(
        "deflate-corrupt", DEFLATED[:2] + b"\xff" * 10 + DEFLATED[12:], "deflate", 400, "deflate"
    ),
    _encoded("deflate-truncated", DEFLATED[:-3], "deflate", 400, "deflate body is truncated"),
    _encoded("deflate-trailing-garbage", DEFLATED + b"zz", "deflate", 400, "after the end"),
    _encoded("deflate-empty", b"", "deflate", 400, "empty, which is not deflate"),
    _encoded("deflate-bomb", zlib.compress(bytes(64 * MAX_BODY)), "deflate", 413, "exceeds"),
    _encoded("zstd", body(), "zstd", 415, "Content-Encoding 'zstd'"),
    _encoded("compress", body(), "compress", 415, "Content-Encoding 'compress'"),
    _encoded("stacked", gzip.compress(GZIPPED), "gzip, gzip", 415, "one encoding at most"),
    _encoded("unknown-after-identity", body(), "identity, lz4", 415, "'lz4'"),
]


CASES = [
    Case("malformed-json", b'{"inputs": [', 400, "not valid JSON"),
    Case("not-utf8", b"\xff\xfe\x00{", 400, "not valid JSON"),
    Case("deeply-nested-json", b"[" * 30_000 + b"]" * 30_000, 400, "not valid JSON"),
    Case("not-an-object", b"[]", 400, "JSON object"),
    Case("no-inputs", b"{}", 400, "'inputs'"),
    Case("id-not-string", body(id=7), 400, "'id'"),
    Case("wrong-datatype", body(tensor(datatype="FP64")), 400, "expects FP32 [-1, 32]"),
    Case("unknown-datatype", body(tensor(datatype="FLOAT")), 400, "datatype 'FLOAT'"),
    Case("wrong-rank", body(tensor(ROW, shape=[FEATURES])), 400, "rank 1"),
    Case("wrong-dimension", body(tensor([ROW[:-1]], shape=[1, 31])), 400, "dimension 1 is 31"),
    Case("negative-dimension", body(tensor(shape=[-1, FEATURES])), 400, "non-negative"),
    Case("zero-rows", body(tensor([], shape=[0, FEATURES])), 400, "cannot be empty"),
    Case("element-count", body(tensor([ROW], shape=[2, FEATURES])), 400, "has 32 elements"),
    Case("ragged-data", body(tensor([ROW, ROW[:3]], shape=[2, FEATURES])), 400, "rectangular"),
    Case("strings-as-numbers", body(tensor([["1.0"] * FEATURES])), 400, "must be JSON numbers"),
    Case("booleans-as-numbers", body(tensor([[True] * FEATURES])), 400, "must be JSON numbers"),
    Case("nulls", body(tensor([[None] * FEATURES])), 400, "must be JSON numbers"),
    Case(
        "a-boolean-among-numbers",
        body(tensor([[*ROW[:-1], True]])),
        400,
        "input 'X': FP32 data must be JSON numbers, not true/false",
    ),
    Case(
        "a-boolean-among-flat-numbers",
        body(tensor([*ROW[:-1], False])),
        400,
        "input 'X': FP32 data must be JSON numbers, not true/false",
    ),
    Case("data-not-array", body(tensor("abc")), 400, "'data' must be a JSON array"),
    Case(
        "no-data",
        body({"name": "X", "datatype": "FP32", "shape": [1, FEATURES]}),
        400,
        "needs 'data'",
    ),
    Case("unknown-input", body(tensor(name="Y")), 400, "unknown input 'Y'"),
    Case("duplicate-input", body(tensor(), tensor()), 400, "given twice"),
    Case("unknown-output", body(outputs=[{"name": "nope"}]), 400, "unknown output 'nope'"),
    Case(
        "classification",
        body(outputs=[{"name": "label", "parameters": {"classification": 2}}]),
        400,
        "classification",
    ),
    Case("nan-token", body(tensor([[*ROW[1:], 0.0]])).replace(b"0.0]", b"NaN]"), 400, "is nan"),
    Case("nan-full-row", body(tensor([[float("nan")] * FEATURES])), 400, "NaN and infinite"),
    Case("infinity", body(tensor([[float("inf"), *ROW[1:]]])), 400, "NaN and infinite"),
    Case("fp32-overflow", body(tensor([[1e39, *ROW[1:]]])), 400, "NaN and infinite"),
    Case(
        "too-many-rows",
        body(tensor([ROW] * (MAX_ROWS + 1), shape=[MAX_ROWS + 1, FEATURES])),
        400,
        f"at most {MAX_ROWS} rows",
    ),
    _binary_case("binary-nan", [NAN_BYTES], [len(NAN_BYTES)], "NaN and infinite"),
    _binary_case("binary-size-vs-shape", [ROW_BYTES[:100]], [100], "needs 128"),
    _binary_case("binary-past-end", [ROW_BYTES], [256], "runs past the end"),
    _binary_case("binary-trailing-bytes", [ROW_BYTES, b"xx"], [len(ROW_BYTES)], "add up to 128"),
    _binary_case("header-length-past-body", [ROW_BYTES], [128], "has only", delta=10_000),
    _binary_case("header-length-cuts-json", [ROW_BYTES], [128], "not valid JSON", delta=-5),
    Case(
        "header-length-not-a-number",
        body(),
        400,
        "byte count",
        headers={"Inference-Header-Content-Length": "12x"},
    ),
    Case(
        "binary-size-not-int",
        body(
            {
                "name": "X",
                "datatype": "FP32",
                "shape": [1, 32],
                "parameters": {"binary_data_size": "128"},
            }
        ),
        400,
        "binary_data_size",
    ),
    Case("unknown-model", body(), 404, "'nope'", path="/v2/models/nope/infer"),
    Case(
        "unknown-version",
        body(),
        404,
        "no version '7'",
        path="/v2/models/classifier/versions/7/infer",
    ),
    Case("unknown-model-metadata", b"", 404, "'nope'", path="/v2/models/nope", method="GET"),
    Case("unknown-route", b"", 404, "no endpoint", path="/v2/nothing", method="GET"),
    Case("wrong-method", b"", 405, "not allowed", method="GET"),
    Case("oversize-body", b'{"inputs":[' + b" " * MAX_BODY + b"]}", 413, "at most"),
    Case(
        "oversize-after-gunzip",
        gzip.compress(b" " * (MAX_BODY + 1)),
        413,
        "exceeds",
        headers={"Content-Encoding": "gzip"},
    ),
    Case(
        "text-plain",
        body(),
        415,
        "Content-Type 'text/plain'",
        headers={"Content-Type": "text/plain"},
    ),
    Case(
        "form-encoded",
        body(),
        415,
        "application/json",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ),
    Case(
        "unknown-encoding", body(), 415, "Content-Encoding 'br'", headers={"Content-Encoding": "br"}
    ),
    Case("missing-token", body(), 401, "Authorization: Bearer", auth=False),
    Case(
        "token-without-scheme",
        body(),
        401,
        "with the word Bearer",
        auth=False,
        headers={"Authorization": TOKEN},
    ),
    Case(
        "close-model-name",
        body(),
        404,
        "did you mean 'classifier'",
        path="/v2/models/clasifier/infer",
    ),
    Case(
        "instances-sent-to-infer",
        json.dumps({"instances": [[0.25] * FEATURES]}).encode(),
        400,
        'a body of "instances" goes to POST /v1/models/{model}:predict',
    ),
    Case(
        "inputs-sent-to-predict",
        body(),
        400,
        'a body of "inputs" goes to POST /v2/models/{model}/infer',
        path="/v1/models/classifier:predict",
    ),
    Case(
        "wrong-token",
        body(),
        401,
        "not valid",
        auth=False,
        headers={"Authorization": "Bearer " + "x" * len(TOKEN)},
    ),
    Case(
        "wrong-scheme",
        body(),
        401,
        "with the word Bearer",
        auth=False,
        headers={"Authorization": f"Basic {TOKEN}"},
    ),
    Case(
        "metrics-without-token",
        b"",
        401,
        "Authorization",
        path="/metrics",
        method="GET",
        auth=False,
    ),
    Case(
        "predict-not-instances",
        b'{"rows": []}',
        400,
        '"instances"',
        path="/v1/models/classifier:predict",
    ),
    Case(
        "predict-empty",
        b'{"instances": []}',
        400,
        "at least one",
        path="/v1/models/classifier:predict",
    ),
    Case(
        "predict-ragged",
        json.dumps({"instances": [ROW, ROW[:5]]}).encode(),
        400,
        "rectangular",
        path="/v1/models/classifier:predict",
    ),
    Case(
        "predict-features",
        json.dumps({"instances": [ROW[:5]]}).encode(),
        400,
        "dimension 1 is 5",
        path="/v1/models/classifier:predict",
    ),
    Case("predict-malformed", b"{", 400, "not valid JSON", path="/v1/models/classifier:predict"),
    Case(
        "predict-a-boolean-among-numbers",
        json.dumps({"instances": [ROW, [True, *ROW[1:]]]}).encode(),
        400,
        "input 'X': FP32 data must be JSON numbers, not true/false",
        path="/v1/models/classifier:predict",
    ),
    *ENCODING_CASES,
]


@pytest.fixture
async def strict_server(start_server: ServerFactory) -> InferenceServer:
    """Token required, small body and row limits."""
    return await start_server(token=TOKEN, max_body_bytes=MAX_BODY, max_request_batch=MAX_ROWS)


@pytest.fixture
async def raw_http() -> AsyncIterator[ClientSession]:
    """A client that sends bodies exactly as given (no automatic decompression)."""
    async with ClientSession(auto_decompress=False) as session:
        yield session


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


# --- the same cases over gRPC -----------------------------------------------------------------

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
