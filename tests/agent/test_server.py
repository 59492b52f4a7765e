"""The endpoint's routes, listeners and token, against a real server."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import stat
import sys
import textwrap
import zlib
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import ClientSession

from edge_agent.runtime import ModelRepository, load_model
from edge_agent.server import InferenceServer
from tests.agent.conftest import ServerFactory, eventually, get, infer_body, ort_outputs, post
from tests.support.models import ModelSet

TOKEN = "another-test-token-0123456789"  # noqa: S105 - a test token
ROOT = Path(__file__).resolve().parents[2]


async def test_server_metadata_and_health(server: InferenceServer, http: ClientSession) -> None:
    meta = await get(http, server.url + "/v2")
    live = await get(http, server.url + "/v2/health/live")
    ready = await get(http, server.url + "/v2/health/ready")

    assert meta.json() == {
        "name": "edge-agent",
        "version": "0.1.0",
        "extensions": ["binary_tensor_data"],
    }
    assert (live.status, live.body) == (200, b"")
    assert (ready.status, ready.body) == (200, b"")


async def test_not_ready_without_models(start_server: ServerFactory, http: ClientSession) -> None:
    server = await start_server(ModelRepository())

    reply = await get(http, server.url + "/v2/health/ready")

    assert reply.status == 400  # OIP: a 4xx status means "false"


async def test_model_ready_and_versioned_routes(
    server: InferenceServer, http: ClientSession
) -> None:
    assert (await get(http, server.url + "/v2/models/classifier/ready")).status == 200
    assert (await get(http, server.url + "/v2/models/classifier/versions/1/ready")).status == 200
    assert (await get(http, server.url + "/v2/models/classifier/versions/2/ready")).status == 404
    assert (await get(http, server.url + "/v2/models/nope/ready")).status == 404
    versioned = await get(http, server.url + "/v2/models/regressor/versions/1")
    assert versioned.json()["versions"] == ["1"]
    assert versioned.json()["outputs"] == [
        {"name": "variable", "datatype": "FP32", "shape": [-1, 1]}
    ]


def _gzip_members(data: bytes) -> bytes:
    half = len(data) // 2
    return gzip.compress(data[:half]) + gzip.compress(data[half:])


ENCODINGS = [
    pytest.param("gzip", gzip.compress, id="gzip"),
    pytest.param("x-gzip", gzip.compress, id="x-gzip"),
    pytest.param("gzip", _gzip_members, id="gzip-two-members"),
    pytest.param("deflate", zlib.compress, id="deflate-zlib"),
    pytest.param("deflate", lambda data: zlib.compress(data)[2:-4], id="deflate-raw"),
    pytest.param("GZIP, identity", gzip.compress, id="gzip-and-identity"),
    pytest.param("identity", lambda data: data, id="identity"),
]


@pytest.mark.parametrize(("coding", "encode"), ENCODINGS)
async def test_encoded_bodies_are_decoded(
    server: InferenceServer,
    onnx_models: ModelSet,
    coding: str,
    encode: Callable[[bytes], bytes],
) -> None:
    model = onnx_models.classifier
    rows = model.X_eval[:8]
    body = json.dumps(infer_body(model, rows)).encode()
    headers = {"Content-Encoding": coding, "Content-Type": "application/json"}

    async with aiohttp.ClientSession(auto_decompress=False) as raw:
        reply = await post(
            raw, server.url + "/v2/models/classifier/infer", data=encode(body), headers=headers
        )

    assert reply.status == 200, reply.body
    (probabilities,) = [o for o in reply.json()["outputs"] if o["name"] == "probabilities"]
    expected = ort_outputs(model.onnx_path, {model.input_name: rows})["probabilities"]
    np.testing.assert_allclose(probabilities["data"], expected.reshape(-1), rtol=1e-5)


async def test_json_infer_echoes_id_and_returns_requested_outputs(
    server: InferenceServer, http: ClientSession, onnx_models: ModelSet
) -> None:
    model = onnx_models.classifier
    rows = model.X_eval[:4]
    request = infer_body(model, rows, id="my-id", outputs=[{"name": "probabilities"}])
    request["inputs"][0]["data"] = rows.reshape(-1).tolist()  # flat data is fine too

    reply = await post(http, server.url + "/v2/models/classifier/versions/1/infer", json=request)

    body = reply.json()
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("application/json")
    assert (body["model_name"], body["model_version"], body["id"]) == ("classifier", "1", "my-id")
    (output,) = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == (
        "probabilities",
        "FP32",
        [4, 3],
    )
    expected = ort_outputs(model.onnx_path, {"X": rows})["probabilities"]
    np.testing.assert_array_equal(np.array(output["data"], np.float32).reshape(4, 3), expected)


async def test_binary_output_layout(
    server: InferenceServer, http: ClientSession, onnx_models: ModelSet
) -> None:
    model = onnx_models.regressor
    rows = model.X_eval[:3]
    request = infer_body(model, rows, parameters={"binary_data_output": True})

    reply = await post(http, server.url + "/v2/models/regressor/infer", json=request)

    length = int(reply.headers["Inference-Header-Content-Length"])
    assert reply.headers["Content-Type"] == "application/octet-stream"
    header = __import__("json").loads(reply.body[:length])
    (output,) = header["outputs"]
    assert output["parameters"] == {"binary_data_size": 12}
    values = np.frombuffer(reply.body[length:], dtype="<f4").reshape(output["shape"])
    np.testing.assert_array_equal(values, ort_outputs(model.onnx_path, {"X": rows})["variable"])


async def test_predict_classifier_gives_labels_and_probabilities(
    server: InferenceServer, http: ClientSession, onnx_models: ModelSet
) -> None:
    model = onnx_models.classifier
    rows = model.X_eval[:3]

    reply = await post(
        http, server.url + "/v1/models/classifier:predict", json={"instances": rows.tolist()}
    )

    body = reply.json()
    expected = ort_outputs(model.onnx_path, {"X": rows})
    assert reply.status == 200
    assert body["model_version"] == "1"
    assert [p["label"] for p in body["predictions"]] == expected["label"].tolist()
    np.testing.assert_allclose(
        [p["probabilities"] for p in body["predictions"]], expected["probabilities"], rtol=1e-6
    )


async def test_predict_regressor_gives_numbers(
    server: InferenceServer, http: ClientSession, onnx_models: ModelSet
) -> None:
    model = onnx_models.regressor
    rows = model.X_eval[:5]

    reply = await post(
        http, server.url + "/v1/models/regressor:predict", json={"instances": rows.tolist()}
    )

    predictions = reply.json()["predictions"]
    assert all(isinstance(p, float) for p in predictions)
    np.testing.assert_allclose(
        predictions, ort_outputs(model.onnx_path, {"X": rows})["variable"].ravel(), rtol=1e-6
    )


async def test_predict_multi_input_model_takes_objects(
    start_server: ServerFactory, http: ClientSession, kinds_model: Path
) -> None:
    repo = ModelRepository()
    repo.swap("kinds", load_model(kinds_model, name="kinds", version=1))
    server = await start_server(repo)
    instances = [
        {"text": "a", "flag": True, "half": [1, 2]},
        {"text": "b", "flag": False, "half": [3, 4]},
    ]

    reply = await post(http, server.url + "/v1/models/kinds:predict", json={"instances": instances})

    assert reply.json()["predictions"] == [
        {"text_out": "a", "flag_out": False, "half_out": [2.0, 4.0]},
        {"text_out": "b", "flag_out": True, "half_out": [6.0, 8.0]},
    ]


async def test_status_reports_models_and_provider_fragments(
    server: InferenceServer, http: ClientSession
) -> None:
    server.add_status_provider(lambda: {"update": {"classifier": "idle"}})
    server.add_status_provider(lambda: 1 / 0)  # type: ignore[arg-type,return-value]

    status = (await get(http, server.url + "/v1/status")).json()

    assert status["agent_version"] == "0.1.0"
    assert status["ready"] is True
    assert status["update"] == {"classifier": "idle"}
    assert len(status["status_errors"]) == 1
    classifier = next(m for m in status["models"] if m["name"] == "classifier")
    assert classifier["version"] == 1
    assert len(classifier["sha256"]) == 64
    assert classifier["in_flight"] == 0
    assert classifier["batchable"] is True


async def test_metrics_exposition(
    server: InferenceServer, http: ClientSession, onnx_models: ModelSet
) -> None:
    model = onnx_models.classifier
    await post(
        http, server.url + "/v2/models/classifier/infer", json=infer_body(model, model.X_eval[:2])
    )
    await post(http, server.url + "/v2/models/nope/infer", json=infer_body(model, model.X_eval[:2]))
    server.metrics.set_update_state("classifier", "downloading")
    server.metrics.set_update_state("classifier", "committed")

    reply = await get(http, server.url + "/metrics")

    text = reply.body.decode()
    assert reply.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert 'edge_agent_requests_total{model="classifier",version="1",status="200"} 1' in text
    assert 'edge_agent_requests_total{model="_unknown",version="",status="404"} 1' in text
    assert (
        'edge_agent_request_duration_seconds_count{model="classifier",endpoint="infer"} 1' in text
    )
    assert 'edge_agent_queue_depth{model="classifier"} 0' in text
    assert 'edge_agent_batch_size_bucket{model="classifier",le="2"} 1' in text
    assert 'edge_agent_model_loads_total{model="regressor"} 1' in text
    assert 'edge_agent_update_state{model="classifier",phase="committed"} 1' in text
    assert 'edge_agent_update_state{model="classifier",phase="downloading"} 0' in text
    assert "# TYPE edge_agent_model_swaps_total counter" in text


async def test_token_guards_everything_but_health(
    start_server: ServerFactory, onnx_models: ModelSet
) -> None:
    server = await start_server(token=TOKEN)
    request = infer_body(onnx_models.regressor, onnx_models.regressor.X_eval[:1])
    async with (
        ClientSession() as anonymous,
        ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as authed,
    ):
        assert (await get(anonymous, server.url + "/v2/health/live")).status == 200
        assert (await get(anonymous, server.url + "/v2/health/ready")).status == 200
        for path in (
            "/v2",
            "/v2/models/regressor",
            "/v2/models/regressor/ready",
            "/v1/status",
            "/metrics",
        ):
            assert (await get(anonymous, server.url + path)).status == 401, path
            assert (await get(authed, server.url + path)).status == 200, path
        assert (
            await post(anonymous, server.url + "/v2/models/regressor/infer", json=request)
        ).status == 401
        assert (
            await post(authed, server.url + "/v2/models/regressor/infer", json=request)
        ).status == 200


async def test_unix_socket_serving(
    start_server: ServerFactory, onnx_models: ModelSet, tmp_path: Path
) -> None:
    path = tmp_path / "agent.sock"
    server = await start_server(unix_socket=path)
    model = onnx_models.regressor

    assert stat.S_ISSOCK(path.stat().st_mode)
    assert stat.S_IMODE(path.stat().st_mode) == 0o660
    async with ClientSession(connector=aiohttp.UnixConnector(path=str(path))) as http:
        reply = await post(
            http, "http://agent/v2/models/regressor/infer", json=infer_body(model, model.X_eval[:2])
        )
    assert reply.status == 200
    assert server.url == f"unix:{path}"
    await server.drain_and_stop()
    assert not path.exists()


SERVE_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from edge_agent.runtime import ModelRepository, load_model
    from edge_agent.server import InferenceServer, ServerConfig, serve_until_signalled

    async def main():
        repo = ModelRepository()
        repo.swap("regressor", load_model(Path(sys.argv[1]), name="regressor", version=1))
        server = InferenceServer(repo, ServerConfig(unix_socket=Path(sys.argv[2])))
        server.add_status_provider(lambda: print("serving", flush=True) or {})
        await serve_until_signalled(server)
        print("stopped", flush=True)

    asyncio.run(main())
    """
)


async def test_sigterm_drains_and_exits(onnx_models: ModelSet, tmp_path: Path) -> None:
    sock = tmp_path / "agent.sock"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    model = str(onnx_models.regressor.onnx_path)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        SERVE_SCRIPT,
        model,
        str(sock),
        stdout=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        await eventually(sock.exists, "the socket exists")
        async with ClientSession(connector=aiohttp.UnixConnector(path=str(sock))) as http:
            # The file appears at bind(), a moment before listen(): retry until accepted.
            async with asyncio.timeout(30):
                while True:
                    try:
                        assert (await get(http, "http://agent/v1/status")).status == 200
                        break
                    except aiohttp.ClientConnectionError:
                        await asyncio.sleep(0.05)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            out, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert out.decode().split() == ["serving", "stopped"]
    assert not sock.exists()


async def test_second_start_and_double_stop(server: InferenceServer) -> None:
    with pytest.raises(RuntimeError):
        await server.start()
    await server.drain_and_stop()
    await server.drain_and_stop()
