"""The real tritonclient.grpc, unmodified, against the agent: outputs equal onnxruntime's.

Also Triton's statistics and model configuration extensions through both tritonclient
transports, typed (non-raw) contents through a plain gRPC stub, and drain on stop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from edge_agent.runtime import ModelRepository, load_model
from edge_agent.server import InferenceServer
from edge_agent.server.grpc import inference_pb2 as pb
from edge_agent.server.settings import GrpcConfig
from tests.agent.conftest import Gate, ServerFactory, eventually, ort_outputs
from tests.support.models import BuiltModel, ModelSet

KINDS = ("classifier", "regressor")
TOKEN = "grpc-token-0123456789abcdef"  # noqa: S105 - a test token


async def _grpc_server(start_server: ServerFactory, **settings: Any) -> InferenceServer:
    return await start_server(grpc=GrpcConfig(port=0), **settings)


@pytest.fixture
async def grpc_server(start_server: ServerFactory) -> InferenceServer:
    """Default settings, gRPC on a free port."""
    return await _grpc_server(start_server)


def _target(server: InferenceServer) -> str:
    assert server.grpc is not None
    return server.grpc.target


def _infer(target: str, model: BuiltModel, rows: np.ndarray[Any, Any]) -> dict[str, Any]:
    with grpcclient.InferenceServerClient(target) as client:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready(model.name)
        tensor = grpcclient.InferInput(model.input_name, list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows)
        outputs = [grpcclient.InferRequestedOutput(n) for n in model.output_names]
        result = client.infer(model.name, [tensor], outputs=outputs, request_id="req-9")
        response = result.get_response()
        assert (response.model_name, response.model_version, response.id) == (
            model.name,
            "1",
            "req-9",
        )
        return {name: result.as_numpy(name) for name in model.output_names}


@pytest.mark.parametrize("kind", KINDS)
async def test_tritonclient_grpc_outputs_equal_onnxruntime(
    grpc_server: InferenceServer, onnx_models: ModelSet, kind: str
) -> None:
    model: BuiltModel = getattr(onnx_models, kind)
    rows = model.X_eval[:17]

    got = await asyncio.to_thread(_infer, _target(grpc_server), model, rows)

    expected = ort_outputs(model.onnx_path, {model.input_name: rows})
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].dtype == value.dtype
        np.testing.assert_array_equal(got[name], value)


def _infer_kinds(target: str) -> dict[str, Any]:
    text = np.array(["héllo", "", "edge ✓"], dtype=object)
    flag = np.array([True, False, True])
    half = np.array([[0.5, -1.25], [2.0, 3.5], [65000.0, 0.0]], dtype=np.float16)
    tensors = []
    for name, value, datatype in (
        ("text", text, "BYTES"),
        ("flag", flag, "BOOL"),
        ("half", half, "FP16"),
    ):
        tensor = grpcclient.InferInput(name, list(value.shape), datatype)
        tensor.set_data_from_numpy(value)
        tensors.append(tensor)
    with grpcclient.InferenceServerClient(target) as client:
        result = client.infer("kinds", tensors)
        return {n: result.as_numpy(n) for n in ("text_out", "flag_out", "half_out")}


async def test_bytes_bool_and_fp16_round_trip_over_grpc(
    start_server: ServerFactory, kinds_model: Path
) -> None:
    repo = ModelRepository()
    repo.swap("kinds", load_model(kinds_model, name="kinds", version=2))
    server = await start_server(repo, grpc=GrpcConfig(port=0))

    got = await asyncio.to_thread(_infer_kinds, _target(server))

    assert [v.decode() for v in got["text_out"]] == ["héllo", "", "edge ✓"]
    np.testing.assert_array_equal(got["flag_out"], [False, True, False])
    np.testing.assert_array_equal(
        got["half_out"], np.array([[1.0, -2.5], [4.0, 7.0], [np.inf, 0.0]], np.float16)
    )


async def test_typed_contents_in_and_out(
    grpc_server: InferenceServer, onnx_models: ModelSet
) -> None:
    model = onnx_models.regressor
    rows = model.X_eval[:3]
    request = pb.ModelInferRequest(model_name="regressor", id="typed")
    request.parameters["binary_data_output"].bool_param = False
    tensor = request.inputs.add(name=model.input_name, datatype="FP32", shape=list(rows.shape))
    tensor.contents.fp32_contents.extend(rows.reshape(-1).tolist())

    async with grpc.aio.insecure_channel(_target(grpc_server)) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        response = await call(request)

    assert not response.raw_output_contents
    expected = ort_outputs(model.onnx_path, {model.input_name: rows})
    (name,) = expected
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == (name, "FP32", [3, 1])
    np.testing.assert_array_equal(
        np.array(output.contents.fp32_contents, np.float32), expected[name].reshape(-1)
    )


def _extensions(http_url: str, target: str) -> dict[str, Any]:
    x = np.zeros((3, 32), np.float32)
    with grpcclient.InferenceServerClient(target) as client:
        tensor = grpcclient.InferInput("X", [3, 32], "FP32")
        tensor.set_data_from_numpy(x)
        client.infer("classifier", [tensor])
        client.infer("classifier", [tensor])
        with pytest.raises(InferenceServerException):
            client.infer(
                "classifier",
                [
                    grpcclient.InferInput("X", [1, 2], "FP32").set_data_from_numpy(
                        np.zeros((1, 2), np.float32)
                    )
                ],
            )
        found = {
            "grpc_config": client.get_model_config("classifier", as_json=True)["config"],
            "grpc_stats": client.get_inference_statistics("classifier", as_json=True),
            "grpc_all": client.get_inference_statistics("", as_json=True),
        }
    with httpclient.InferenceServerClient(http_url) as client:
        found["http_config"] = client.get_model_config("classifier", "1")
        found["http_stats"] = client.get_inference_statistics("classifier", "1")
        found["http_all"] = client.get_inference_statistics()
    return found


async def test_statistics_and_model_config_over_both_transports(
    grpc_server: InferenceServer, onnx_models: ModelSet
) -> None:
    url = grpc_server.url.removeprefix("http://")

    found = await asyncio.to_thread(_extensions, url, _target(grpc_server))

    config = found["http_config"]
    assert config == {
        "name": "classifier",
        "platform": "onnxruntime_onnx",
        "backend": "onnxruntime",
        "max_batch_size": 64,
        "input": [{"name": "X", "data_type": "TYPE_FP32", "dims": [32]}],
        "output": [
            {"name": "label", "data_type": "TYPE_INT64", "dims": []},
            {"name": "probabilities", "data_type": "TYPE_FP32", "dims": [3]},
        ],
        "dynamic_batching": {"max_queue_delay_microseconds": 1000},
    }
    grpc_config = found["grpc_config"]
    assert grpc_config["input"] == [{"name": "X", "data_type": "TYPE_FP32", "dims": ["32"]}]
    assert grpc_config["max_batch_size"] == 64
    (stats,) = found["http_stats"]["model_stats"]
    assert (stats["name"], stats["version"]) == ("classifier", "1")
    assert stats["inference_count"] == 6  # rows, as Triton counts them
    assert 1 <= stats["execution_count"] <= 2
    inference = stats["inference_stats"]
    assert inference["success"]["count"] == 2
    assert inference["fail"]["count"] == 1
    assert inference["success"]["ns"] >= inference["compute_infer"]["ns"] > 0
    assert inference["queue"]["count"] == inference["compute_input"]["count"] == 2
    assert inference["cache_hit"] == {"count": 0, "ns": 0}
    assert (
        sum(b["compute_infer"]["count"] for b in stats["batch_stats"]) == stats["execution_count"]
    )
    (grpc_stats,) = found["grpc_stats"]["model_stats"]
    assert int(grpc_stats["inference_count"]) == 6
    assert int(grpc_stats["inference_stats"]["fail"]["count"]) == 1
    names = {entry["name"] for entry in found["http_all"]["model_stats"]}
    assert (
        names
        == {"classifier", "regressor"}
        == {e["name"] for e in found["grpc_all"]["model_stats"]}
    )


def _call(target: str, action: str, token: str | None = None) -> InferenceServerException:
    headers = None if token is None else {"authorization": f"Bearer {token}"}
    tensor = grpcclient.InferInput("X", [1, 32], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 32), np.float32))
    with grpcclient.InferenceServerClient(target) as client:
        calls = {
            "infer": lambda: client.infer("classifier", [tensor], headers=headers),
            "infer-typo": lambda: client.infer("clasifier", [tensor], headers=headers),
            "metadata": lambda: client.get_model_metadata("nope", headers=headers),
            "stats": lambda: client.get_inference_statistics("nope", headers=headers),
        }
        with pytest.raises(InferenceServerException) as caught:
            calls[action]()
        return caught.value


@pytest.mark.parametrize(
    ("action", "token", "status", "message"),
    [
        ("infer", None, "StatusCode.UNAUTHENTICATED", "Authorization: Bearer"),
        ("infer-typo", TOKEN, "StatusCode.NOT_FOUND", "did you mean 'classifier'"),
        ("infer", "x" * len(TOKEN), "StatusCode.UNAUTHENTICATED", "not valid"),
        ("metadata", TOKEN, "StatusCode.NOT_FOUND", "'nope'"),
        ("stats", TOKEN, "StatusCode.NOT_FOUND", "'nope'"),
        ("metadata", None, "StatusCode.UNAUTHENTICATED", "Authorization: Bearer"),
    ],
)
async def test_token_and_unknown_models_get_their_status(
    start_server: ServerFactory, action: str, token: str | None, status: str, message: str
) -> None:
    server = await _grpc_server(start_server, token=TOKEN)

    error = await asyncio.to_thread(_call, _target(server), action, token)

    assert error.status() == status
    assert message in error.message()


def _probe(target: str) -> tuple[bool, bool]:
    with grpcclient.InferenceServerClient(target) as client:
        return client.is_server_live(), client.is_server_ready()


async def test_health_probes_need_no_token(start_server: ServerFactory) -> None:
    server = await _grpc_server(start_server, token=TOKEN)

    assert await asyncio.to_thread(_probe, _target(server)) == (True, True)


async def _aio_infer(target: str, request: pb.ModelInferRequest) -> pb.ModelInferResponse:
    async with grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        response: pb.ModelInferResponse = await call(request)
        return response


async def test_a_request_in_flight_finishes_when_the_server_drains(
    start_server: ServerFactory, onnx_models: ModelSet
) -> None:
    gate = Gate()  # holds the only inference thread until opened
    try:
        server = await _grpc_server(start_server, executor=gate.executor)
        rows = onnx_models.classifier.X_eval[:2]
        request = pb.ModelInferRequest(model_name="classifier")
        request.inputs.add(name="X", datatype="FP32", shape=[2, 32])
        request.raw_input_contents.append(rows.tobytes())
        pending = asyncio.create_task(_aio_infer(_target(server), request))
        model = server.dataplane.model("classifier")
        await eventually(lambda: model.in_flight > 0, "the request reaches the model")
        stopping = asyncio.create_task(server.drain_and_stop())
        await eventually(lambda: server.dataplane.draining, "the server drains")
        assert not server.dataplane.is_ready()
        gate.open()
        response = await pending
        await stopping
    finally:
        gate.close()

    expected = ort_outputs(onnx_models.classifier.onnx_path, {"X": rows})
    label = np.frombuffer(response.raw_output_contents[0], np.int64)
    np.testing.assert_array_equal(label, expected["label"])
