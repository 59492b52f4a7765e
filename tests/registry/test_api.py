"""The registry's REST API: the happy path, every bad input, and the OpenAPI document."""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import pytest
from aiohttp import FormData

from edge_protocol import Assignment, Release, TrustedState
from model_registry.api.app import create_app
from model_registry.config import ApiConfig
from tests.registry.conftest import Api
from tests.support.models import ModelSet


def _form(model: bytes, **fields: Any) -> FormData:
    form = FormData()
    form.add_field("model", model, filename="model.onnx", content_type="application/octet-stream")
    for name, value in fields.items():
        if isinstance(value, bytes):
            form.add_field(name, value, filename=name, content_type="application/octet-stream")
        else:
            form.add_field(name, str(value))
    return form


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


async def _push(api: Api, models: ModelSet, name: str = "clf", **fields: Any) -> dict[str, Any]:
    """Push the classifier; the same file again makes another version (allow_duplicate)."""
    fields.setdefault("allow_duplicate", "true")
    response = await api.client.post(
        f"/v1/models/{name}/versions",
        data=_form(models.classifier.onnx_path.read_bytes(), **fields),
        headers=api.auth(),
    )
    assert response.status == 201, await response.text()
    return await response.json()


async def _add_device(api: Api, device_id: str, group: str = "lab") -> dict[str, Any]:
    response = await api.client.post(
        "/v1/devices", json={"device_id": device_id, "group": group}, headers=api.auth()
    )
    assert response.status == 201, await response.text()
    return await response.json()


async def test_push_add_device_deploy(api: Api, onnx_models: ModelSet) -> None:
    eval_set = _npz(X=onnx_models.classifier.X_eval, y=onnx_models.classifier.y_eval)
    first = await _push(api, onnx_models, quantize="int8", eval=eval_set, label="first")
    second = await _push(api, onnx_models)
    assert (first["version"], second["version"]) == (1, 2)
    assert first["label"] == "first"
    assert "accuracy_fp32" in first["build"]
    assert "accuracy_int8" in first["build"]
    Release.from_dict(first["signed_release"]["signed"])

    device = await _add_device(api, "dev-1")
    files = {k: base64.b64decode(v) for k, v in device["bundle"].items()}
    assert set(files) == {"device.toml", "root.json", "mqtt-password"}
    assert b'device_id = "dev-1"' in files["device.toml"]

    response = await api.client.post(
        "/v1/deployments", json={"model": "clf", "version": 1, "group": "lab"}, headers=api.auth()
    )
    assert response.status == 201, await response.text()
    assert (await response.json())["devices"] == ["dev-1"]
    stored = await api.ctx.storage.get_device("dev-1")
    assert stored.assignment is not None
    state = TrustedState(files["root.json"], device_id="dev-1")
    assignment: Assignment = state.verify_assignment(stored.assignment)
    assert assignment.models["clf"].sha256 == first["sha256"]

    listing = await (await api.client.get("/v1/devices", headers=api.auth())).json()
    assert listing["devices"][0]["models"]["clf"]["assigned"] == 1


async def test_rollback_returns_the_group_to_its_previous_release(
    api: Api, onnx_models: ModelSet
) -> None:
    await _push(api, onnx_models)
    await _push(api, onnx_models)
    await _add_device(api, "dev-1")
    for version in (1, 2):
        body = {"model": "clf", "version": version, "group": "lab"}
        assert (
            await api.client.post("/v1/deployments", json=body, headers=api.auth())
        ).status == 201
    response = await api.client.post(
        "/v1/models/clf/rollback", json={"group": "lab"}, headers=api.auth()
    )
    assert response.status == 201, await response.text()
    body = await response.json()
    assert (body["kind"], body["version"]) == ("rollback", 1)
    device = await api.ctx.storage.get_device("dev-1")
    assert device.assigned["clf"]["version"] == 1
    assert device.assignment_seq == 3


async def test_artifact_download_supports_range_etag_and_device_credentials(
    api: Api, onnx_models: ModelSet
) -> None:
    release = await _push(api, onnx_models)
    device = await _add_device(api, "dev-1")
    password = base64.b64decode(device["bundle"]["mqtt-password"]).decode()
    basic = base64.b64encode(f"dev-1:{password}".encode()).decode()
    url = f"/v1/artifacts/{release['sha256']}"
    whole = await api.client.get(url, headers={"Authorization": f"Basic {basic}"})
    assert whole.status == 200
    data = await whole.read()
    assert len(data) == release["size"]
    part = await api.client.get(url, headers={**api.auth(), "Range": "bytes=10-19"})
    assert part.status == 206
    assert await part.read() == data[10:20]
    cached = await api.client.get(
        url, headers={**api.auth(), "If-None-Match": whole.headers["ETag"]}
    )
    assert cached.status == 304
    wrong = base64.b64encode(b"dev-1:nope").decode()
    assert (await api.client.get(url, headers={"Authorization": f"Basic {wrong}"})).status == 401


async def test_token_roles_are_enforced(api: Api, onnx_models: ModelSet) -> None:
    response = await api.client.post("/v1/tokens", json={"role": "viewer"}, headers=api.auth())
    assert response.status == 201
    viewer = (await response.json())["token"]
    assert (await api.client.get("/v1/models", headers=api.auth(viewer))).status == 200
    denied = await api.client.post(
        "/v1/models/clf/versions",
        data=_form(onnx_models.classifier.onnx_path.read_bytes()),
        headers=api.auth(viewer),
    )
    assert denied.status == 403
    assert "publisher" in (await denied.json())["error"]


Call = Callable[[Api, ModelSet], Awaitable[Any]]


async def _corrupt_onnx(api: Api, _m: ModelSet) -> Any:
    return await api.client.post(
        "/v1/models/m/versions", data=_form(b"not onnx at all"), headers=api.auth()
    )


async def _wrong_content_type(api: Api, m: ModelSet) -> Any:
    body = m.classifier.onnx_path.read_bytes()
    return await api.client.post(
        "/v1/models/m/versions", data=body, headers={**api.auth(), "Content-Type": "text/plain"}
    )


async def _oversize(api: Api, _m: ModelSet) -> Any:
    return await api.client.post(
        "/v1/models/m/versions", data=_form(b"\0" * (3 * 1024 * 1024)), headers=api.auth()
    )


async def _bad_eval(api: Api, m: ModelSet) -> Any:
    data = _form(m.classifier.onnx_path.read_bytes(), quantize="int8", eval=b"not an npz")
    return await api.client.post("/v1/models/m/versions", data=data, headers=api.auth())


async def _bad_model_name(api: Api, m: ModelSet) -> Any:
    data = _form(m.classifier.onnx_path.read_bytes())
    return await api.client.post("/v1/models/bad$name/versions", data=data, headers=api.auth())


async def _unknown_model(api: Api, _m: ModelSet) -> Any:
    return await api.client.get("/v1/models/nope/versions", headers=api.auth())


async def _missing_token(api: Api, _m: ModelSet) -> Any:
    return await api.client.get("/v1/models")


async def _bad_token(api: Api, _m: ModelSet) -> Any:
    return await api.client.get("/v1/models", headers=api.auth("mr_forged"))


async def _deploy_missing_version(api: Api, _m: ModelSet) -> Any:
    body = {"model": "m", "version": 9, "group": "lab"}
    return await api.client.post("/v1/deployments", json=body, headers=api.auth())


async def _deploy_both_targets(api: Api, _m: ModelSet) -> Any:
    body = {"model": "m", "version": 1, "group": "lab", "devices": ["a"]}
    return await api.client.post("/v1/deployments", json=body, headers=api.auth())


async def _malformed_json(api: Api, _m: ModelSet) -> Any:
    headers = {**api.auth(), "Content-Type": "application/json"}
    return await api.client.post("/v1/deployments", data=b"{nope", headers=headers)


async def _duplicate_device(api: Api, _m: ModelSet) -> Any:
    await _add_device(api, "dup")
    return await api.client.post("/v1/devices", json={"device_id": "dup"}, headers=api.auth())


async def _bad_device_id(api: Api, _m: ModelSet) -> Any:
    return await api.client.post("/v1/devices", json={"device_id": "a/b"}, headers=api.auth())


async def _rollback_without_history(api: Api, _m: ModelSet) -> Any:
    await _add_device(api, "d1")
    return await api.client.post("/v1/models/m/rollback", json={"group": "lab"}, headers=api.auth())


async def _bad_artifact_name(api: Api, _m: ModelSet) -> Any:
    return await api.client.get("/v1/artifacts/..%2Fregistry.db", headers=api.auth())


BAD_INPUTS: list[tuple[str, Call, int, str]] = [
    ("corrupt onnx", _corrupt_onnx, 400, "onnx"),
    ("wrong content type", _wrong_content_type, 415, "content type"),
    ("oversize upload", _oversize, 413, "limit"),
    ("evaluation set not npz", _bad_eval, 400, "npz"),
    ("model name", _bad_model_name, 400, "model name"),
    ("unknown model", _unknown_model, 404, "nope"),
    ("missing token", _missing_token, 401, "bearer"),
    ("bad token", _bad_token, 401, "token"),
    ("deploy of a missing model", _deploy_missing_version, 404, "no model 'm'"),
    ("deploy with two targets", _deploy_both_targets, 400, "either a group"),
    ("malformed json", _malformed_json, 400, "JSON"),
    ("duplicate device", _duplicate_device, 409, "dup"),
    ("bad device id", _bad_device_id, 400, "device id"),
    ("rollback of a model never pushed", _rollback_without_history, 404, "no model 'm'"),
    ("artifact path traversal", _bad_artifact_name, 400, "sha256"),
]


@pytest.fixture
async def small_api(api: Api) -> Api:
    """The same registry, served with a 1 MiB upload limit."""
    from aiohttp.test_utils import TestClient, TestServer

    config = dataclasses.replace(api.ctx.config, api=ApiConfig(max_upload_mb=1))
    ctx = dataclasses.replace(api.ctx, config=config)
    client = TestClient(TestServer(create_app(ctx)))
    await client.start_server()
    yield Api(client, ctx, api.admin_token)
    await client.close()


@pytest.mark.parametrize(
    ("call", "status", "complaint"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
async def test_bad_input_gets_a_clear_4xx_and_stores_nothing(
    small_api: Api, onnx_models: ModelSet, call: Call, status: int, complaint: str
) -> None:
    storage = small_api.ctx.storage
    response = await call(small_api, onnx_models)
    assert response.status == status, await response.text()
    body = await response.json()
    assert complaint.lower() in body["error"].lower()
    assert await storage.models() == []
    assert await storage.deployments() == []
    blob_root = small_api.ctx.config.path(small_api.ctx.config.storage.blobs)
    assert not any(p.is_file() for p in blob_root.rglob("*"))


async def test_openapi_documents_every_route(api: Api) -> None:
    response = await api.client.get("/v1/openapi.json")
    document = await response.json()
    documented = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
        if method != "parameters"
    }
    served = {
        (route.method, route.resource.canonical)
        for route in api.client.server.app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert documented == served
    json.dumps(document)


async def test_metrics_count_requests(api: Api) -> None:
    await api.client.get("/v1/models", headers=api.auth())
    text = await (await api.client.get("/metrics", headers=api.auth())).text()
    assert (
        'model_registry_http_requests_total{method="GET",route="/v1/models",status="200"} 1' in text
    )
    assert "model_registry_devices" in text


async def test_calibration_rows_select_static_quantization(api: Api, onnx_models: ModelSet) -> None:
    model = onnx_models.classifier
    release = await _push(
        api,
        onnx_models,
        quantize="int8",
        eval=_npz(X=model.X_eval, y=model.y_eval),
        calibration=_npz(X=model.X_eval[:32]),
    )
    assert release["build"]["quantization"] == "static_qdq"
