"""Tensor wire forms: strict JSON and binary decoding, exact encoding, never a crash."""

from __future__ import annotations

import contextlib
import json
import re
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.errors import InferenceError, InvalidRequestError
from edge_agent.server.oip import (
    InferResponse,
    OutputTensor,
    decode_infer_request,
    encode_infer_response,
)
from edge_agent.server.tensors import (
    array_datatype,
    array_to_binary,
    array_to_json,
    binary_to_array,
    json_to_array,
)

NUMERIC = [
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "FP16",
    "FP32",
    "FP64",
]


@pytest.mark.parametrize("datatype", NUMERIC)
def test_numeric_round_trip_through_json_and_binary(datatype: str) -> None:
    values = [[0, 1, 2], [3, 4, 5]]

    from_json = json_to_array(values, datatype, (2, 3), "t")
    from_flat = json_to_array([0, 1, 2, 3, 4, 5], datatype, (2, 3), "t")
    from_binary = binary_to_array(array_to_binary(from_json), datatype, (2, 3), "t")

    assert array_datatype(from_json) == datatype
    for array in (from_flat, from_binary):
        np.testing.assert_array_equal(array, from_json)
        assert array.dtype == from_json.dtype
    assert array_to_json(from_json) == [0, 1, 2, 3, 4, 5]


def test_bool_and_bytes_round_trip() -> None:
    flags = json_to_array([True, False, True], "BOOL", (3,), "t")
    words = json_to_array([["a", "é"], ["", "xyz"]], "BYTES", (2, 2), "t")

    assert array_to_binary(flags) == b"\x01\x00\x01"
    packed = array_to_binary(words)
    assert packed == b"".join(
        struct.pack("<I", len(w.encode())) + w.encode() for w in ["a", "é", "", "xyz"]
    )
    assert binary_to_array(packed, "BYTES", (2, 2), "t").tolist() == [["a", "é"], ["", "xyz"]]
    assert array_to_json(words) == ["a", "é", "", "xyz"]
    assert array_datatype(words) == "BYTES"
    assert array_datatype(flags) == "BOOL"


def test_fp32_json_values_are_exact() -> None:
    original = np.array([0.1, 1 / 3, -2.5e-8, 3.4e38], dtype=np.float32)

    decoded = json_to_array(json.loads(json.dumps(array_to_json(original))), "FP32", (4,), "t")

    np.testing.assert_array_equal(decoded, original)


@pytest.mark.parametrize(
    ("data", "datatype", "shape", "message"),
    [
        ([256], "UINT8", (1,), "0..255"),
        ([-1], "UINT32", (1,), "0..4294967295"),
        ([2**63], "INT64", (1,), "-9223372036854775808"),
        ([2**64], "UINT64", (1,), "integers"),
        ([1.5], "INT32", (1,), "integers"),
        ([True], "INT8", (1,), "integers"),
        ([1], "BOOL", (1,), "true/false"),
        ([1], "BYTES", (1,), "strings"),
        (["a", 1], "BYTES", (2,), "strings"),
        ([["a"], ["b", "c"]], "BYTES", (2, 1), "strings"),
        ([[1, 2], [3]], "FP32", (2, 2), "rectangular"),
        ([[1, 2, 3, 4]], "FP32", (2, 2), "nested as [1, 4]"),
        ([1, 2, 3], "FP32", (2, 2), "has 3 elements"),
        ([{"a": 1}], "FP32", (1,), "numbers"),
        # Booleans among numbers, which numpy would read as 1 and 0, in every numeric type.
        *(([1, True], t, (2,), "not true/false") for t in ("FP16", "FP32", "FP64")),
        *(([[0, 1], [2, False]], t, (2, 2), "not true/false") for t in ("INT8", "UINT64")),
        ([[[1.5]], [[True]]], "FP32", (2, 1, 1), "not true/false"),
        ([False, 2], "INT32", (2,), "not true/false"),
        ([True, 1], "BOOL", (2,), "true/false"),
        ([[True], [0.0]], "BOOL", (2, 1), "true/false"),
    ],
)
def test_json_decoding_is_strict(
    data: Any, datatype: str, shape: tuple[int, ...], message: str
) -> None:
    with pytest.raises(InvalidRequestError, match=re.escape(message)):
        json_to_array(data, datatype, shape, "t")


def test_binary_size_must_match_shape() -> None:
    with pytest.raises(InvalidRequestError, match="needs 24"):
        binary_to_array(b"\x00" * 20, "FP64", (3,), "t")


def test_output_dtypes_without_oip_name_are_inference_errors() -> None:
    with pytest.raises(InferenceError):
        array_datatype(np.array([1 + 2j]))


def test_response_encoding_json_and_binary_layout() -> None:
    response = InferResponse(
        "m", "3",
        (OutputTensor("a", np.array([[1.5, 2.5]], np.float32), binary=True),
         OutputTensor("b", np.array([7], np.int64)),
         OutputTensor("c", np.array(["x"], dtype=object), binary=True)),
        id="r1",
    )  # fmt: skip

    payload, header_length = encode_infer_response(response)

    assert header_length is not None
    header = json.loads(payload[:header_length])
    assert header["model_version"] == "3"
    assert header["id"] == "r1"
    assert header["outputs"][0] == {
        "name": "a",
        "datatype": "FP32",
        "shape": [1, 2],
        "parameters": {"binary_data_size": 8},
    }
    assert header["outputs"][1] == {"name": "b", "datatype": "INT64", "shape": [1], "data": [7]}
    assert payload[header_length:] == np.array([1.5, 2.5], "<f4").tobytes() + b"\x01\x00\x00\x00x"


def test_request_with_binary_and_json_inputs_in_order() -> None:
    header = json.dumps({
        "id": "z",
        "inputs": [
            {"name": "a", "datatype": "INT32", "shape": [2], "parameters": {"binary_data_size": 8}},
            {"name": "b", "datatype": "BOOL", "shape": [1], "data": [True]},
            {"name": "c", "datatype": "FP16", "shape": [1], "parameters": {"binary_data_size": 2}},
        ],
        "outputs": [{"name": "o", "parameters": {"binary_data": True}}, {"name": "p"}],
        "parameters": {"binary_data_output": False, "custom": "ignored"},
    }).encode()  # fmt: skip
    blob = np.array([5, -6], "<i4").tobytes() + np.array([0.5], "<f2").tobytes()

    request = decode_infer_request(header + blob, len(header))

    assert [t.name for t in request.inputs] == ["a", "b", "c"]
    assert request.inputs[0].array.tolist() == [5, -6]
    assert request.inputs[2].array.tolist() == [0.5]
    assert request.id == "z"
    assert request.binary_output is False
    assert [(o.name, o.binary) for o in request.outputs or ()] == [("o", True), ("p", None)]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=20,
)
DATATYPES = st.sampled_from([*NUMERIC, "BOOL", "BYTES", "BF16", "x"])
SHAPES = st.lists(st.integers(-1, 4), max_size=3) | JSON_VALUES


@settings(max_examples=300, deadline=None)
@given(
    data=JSON_VALUES,
    datatype=DATATYPES,
    shape=SHAPES,
    size=st.none() | st.integers(-2, 40) | JSON_VALUES,
    blob=st.binary(max_size=40),
)
def test_any_request_either_decodes_or_raises_invalid_request(
    data: Any, datatype: str, shape: Any, size: Any, blob: bytes
) -> None:
    tensor: dict[str, Any] = {"name": "t", "datatype": datatype, "shape": shape, "data": data}
    if size is not None:
        tensor = {**tensor, "parameters": {"binary_data_size": size}}
        del tensor["data"]
    header = json.dumps({"inputs": [tensor]}).encode()

    for body, length in ((header, None), (header + blob, len(header))):
        with contextlib.suppress(InvalidRequestError):
            decode_infer_request(body, length)
