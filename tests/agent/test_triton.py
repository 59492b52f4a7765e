"""The real tritonclient.http, unmodified, against the agent: outputs equal onnxruntime's."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from edge_agent.runtime import ModelRepository, load_model
from edge_agent.server import InferenceServer
from tests.agent.conftest import ServerFactory, ort_outputs
from tests.support.models import BuiltModel, ModelSet

KINDS = ("classifier", "regressor")


def _triton_infer(
    url: str,
    model: BuiltModel,
    rows: np.ndarray[Any, Any],
    *,
    binary: bool | None,
    compression: str | None = None,
) -> dict[str, np.ndarray[Any, Any]]:
    """Infer with tritonclient; binary=None uses every default (binary in and out)."""
    with httpclient.InferenceServerClient(url) as client:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(model.name)
        tensor = httpclient.InferInput(model.input_name, list(rows.shape), "FP32")
        if binary is None:
            tensor.set_data_from_numpy(rows)
            outputs = None
        else:
            tensor.set_data_from_numpy(rows, binary_data=binary)
            outputs = [
                httpclient.InferRequestedOutput(n, binary_data=binary) for n in model.output_names
            ]
        result = client.infer(
            model.name,
            [tensor],
            outputs=outputs,
            request_id="req-7",
            request_compression_algorithm=compression,
            response_compression_algorithm=compression,
        )
        response = result.get_response()
        assert response["model_name"] == model.name
        assert response["model_version"] == "1"
        assert response["id"] == "req-7"
        return {name: result.as_numpy(name) for name in model.output_names}


def _url(server: InferenceServer) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("binary", [None, True, False], ids=["defaults", "binary", "json"])
async def test_tritonclient_outputs_equal_onnxruntime(
    server: InferenceServer, onnx_models: ModelSet, kind: str, binary: bool | None
) -> None:
    model: BuiltModel = getattr(onnx_models, kind)
    rows = model.X_eval[:17]

    got = await asyncio.to_thread(_triton_infer, _url(server), model, rows, binary=binary)

    expected = ort_outputs(model.onnx_path, {model.input_name: rows})
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype
        np.testing.assert_array_equal(got[name], value)


@pytest.mark.parametrize("compression", ["gzip", "deflate"])
async def test_tritonclient_compressed_requests_and_responses(
    server: InferenceServer, onnx_models: ModelSet, compression: str
) -> None:
    model = onnx_models.classifier
    rows = model.X_eval[:40]

    got = await asyncio.to_thread(
        _triton_infer, _url(server), model, rows, binary=True, compression=compression
    )

    expected = ort_outputs(model.onnx_path, {model.input_name: rows})
    for name, value in expected.items():
        np.testing.assert_array_equal(got[name], value)


def _triton_metadata(url: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    with httpclient.InferenceServerClient(url) as client:
        return client.get_server_metadata(), client.get_model_metadata(name, "1")


async def test_tritonclient_reads_metadata(server: InferenceServer, onnx_models: ModelSet) -> None:
    server_meta, model_meta = await asyncio.to_thread(_triton_metadata, _url(server), "classifier")

    assert "binary_tensor_data" in server_meta["extensions"]
    assert model_meta == {
        "name": "classifier",
        "versions": ["1"],
        "platform": "onnx_onnxv1",
        "inputs": [
            {"name": "X", "datatype": "FP32", "shape": [-1, onnx_models.classifier.n_features]}
        ],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        ],
    }


def _infer_kinds(url: str, binary: bool) -> dict[str, np.ndarray[Any, Any]]:
    text = np.array(["héllo", "", "edge ✓"], dtype=object)
    flag = np.array([True, False, True])
    half = np.array([[0.5, -1.25], [2.0, 3.5], [65000.0, 0.0]], dtype=np.float16)
    tensors = []
    for name, value, datatype in (
        ("text", text, "BYTES"),
        ("flag", flag, "BOOL"),
        ("half", half, "FP16"),
    ):
        tensor = httpclient.InferInput(name, list(value.shape), datatype)
        tensors.append(tensor.set_data_from_numpy(value, binary_data=binary))
    outputs = [
        httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("text_out", "flag_out")
    ]
    with httpclient.InferenceServerClient(url) as client:
        result = client.infer("kinds", tensors, outputs=outputs)
        got = {name: result.as_numpy(name) for name in ("text_out", "flag_out")}
        assert result.as_numpy("half_out") is None  # not requested, not returned
        return got


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
async def test_bytes_bool_and_fp16_tensors_round_trip(
    start_server: ServerFactory, kinds_model: Path, binary: bool
) -> None:
    repo = ModelRepository()
    repo.swap("kinds", load_model(kinds_model, name="kinds", version=3))
    server = await start_server(repo)

    got = await asyncio.to_thread(_infer_kinds, _url(server), binary)

    assert [v.decode() if isinstance(v, bytes) else v for v in got["text_out"]] == [
        "héllo",
        "",
        "edge ✓",
    ]
    np.testing.assert_array_equal(got["flag_out"], [False, True, False])


def _infer_unknown(url: str) -> None:
    with httpclient.InferenceServerClient(url) as client:
        tensor = httpclient.InferInput("X", [1, 2], "FP32").set_data_from_numpy(
            np.zeros((1, 2), np.float32)
        )
        client.infer("nope", [tensor])


async def test_tritonclient_sees_errors_as_exceptions_with_the_message(
    server: InferenceServer,
) -> None:
    with pytest.raises(InferenceServerException) as caught:
        await asyncio.to_thread(_infer_unknown, _url(server))

    assert caught.value.status() == "404"
    assert "nope" in caught.value.message()
