"""The bad requests of test_bad_input.py and test_bad_input_grpc.py, one table for both."""

from __future__ import annotations

import gzip
import json
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

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
