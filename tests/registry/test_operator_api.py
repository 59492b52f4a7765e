"""REST routes an operator manages the registry with: tokens, removing and moving devices, pushes.

Each refusal is a JSON 4xx naming what is wrong; a viewer may read but not remove or revoke.
"""

from __future__ import annotations

from typing import Any

from tests.registry.conftest import Api
from tests.registry.test_api import _add_device, _form, _push
from tests.support.models import ModelSet


async def _token(api: Api, role: str, name: str) -> dict[str, Any]:
    body = {"role": role, "name": name}
    response = await api.client.post("/v1/tokens", json=body, headers=api.auth())
    assert response.status == 201, await response.text()
    return await response.json()


async def _call(api: Api, method: str, path: str, status: int, token: str | None = None,
                **kwargs: Any) -> Any:  # fmt: skip
    response = await api.client.request(method, path, headers=api.auth(token), **kwargs)
    body = await response.json()
    assert response.status == status, body
    return body


async def test_tokens_are_listed_without_secrets_and_revoked(api: Api) -> None:
    viewer = await _token(api, "viewer", "dashboard")
    await _call(api, "GET", "/v1/models", 200, viewer["token"])  # used once: last_used is set
    listed = (await _call(api, "GET", "/v1/tokens", 200))["tokens"]
    assert [(t["name"], t["role"]) for t in listed] == [("admin", "admin"), ("dashboard", "viewer")]
    assert all(set(t) == {"id", "name", "role", "created", "last_used"} for t in listed)
    assert listed[1]["last_used"] is not None
    assert viewer["token"] not in str(listed)

    revoked = await _call(api, "DELETE", f"/v1/tokens/{viewer['id']}", 200)
    assert (revoked["id"], revoked["name"]) == (viewer["id"], "dashboard")
    refused = await _call(api, "GET", "/v1/models", 401, viewer["token"])
    assert refused["error"] == "invalid or revoked token"
    await _call(api, "DELETE", f"/v1/tokens/{viewer['id']}", 404)


async def test_the_last_admin_token_cannot_be_revoked(api: Api) -> None:
    first = (await _call(api, "GET", "/v1/tokens", 200))["tokens"][0]
    refused = await _call(api, "DELETE", f"/v1/tokens/{first['id']}", 409)
    assert "last admin token" in refused["error"]
    second = await _token(api, "admin", "second")
    await _call(api, "DELETE", f"/v1/tokens/{first['id']}", 200, second["token"])
    await _call(api, "GET", "/v1/models", 401)  # the first admin token is gone
    refused = await _call(api, "DELETE", f"/v1/tokens/{second['id']}", 409, second["token"])
    assert "last admin token" in refused["error"]


async def test_token_routes_refuse_bad_ids_and_small_roles(api: Api) -> None:
    for bad in ("0", "-1", "abc", "1.5", str(2**64)):
        error = (await _call(api, "DELETE", f"/v1/tokens/{bad}", 400))["error"]
        assert "token id must be a whole number" in error
    publisher = await _token(api, "publisher", "ci")
    viewer = await _token(api, "viewer", "ro")
    for token in (publisher["token"], viewer["token"]):
        await _call(api, "GET", "/v1/tokens", 403, token)
        await _call(api, "DELETE", f"/v1/tokens/{publisher['id']}", 403, token)
    assert len((await _call(api, "GET", "/v1/tokens", 200))["tokens"]) == 3


async def test_a_device_is_moved_and_removed_with_everything_it_reported(
    api: Api, onnx_models: ModelSet
) -> None:
    await _push(api, onnx_models)
    await _add_device(api, "dev-1")
    await _add_device(api, "dev-2")
    deployment = await _call(
        api, "POST", "/v1/deployments", 201, json={"model": "clf", "version": 1, "group": "lab"}
    )
    moved = await _call(api, "PATCH", "/v1/devices/dev-1", 200, json={"group": "field"})
    assert moved["group"] == "field"
    assert moved["models"]["clf"]["assigned"] == 1  # the assignment does not move with it
    assert [d["device_id"] for d in (await _call(api, "GET", "/v1/devices?group=field", 200))[
        "devices"]] == ["dev-1"]  # fmt: skip
    await api.ctx.storage.add_event("dev-1", api.ctx.clock(), {"event": "received"})

    removed = await _call(api, "DELETE", "/v1/devices/dev-1", 200)
    assert removed["device_id"] == "dev-1"
    assert removed["broker"]["status"] == "not_connected"  # this API runs without a broker
    await _call(api, "GET", "/v1/devices/dev-1", 404)
    await _call(api, "DELETE", "/v1/devices/dev-1", 404)
    shown = await _call(api, "GET", f"/v1/deployments/{deployment['id']}", 200)
    assert [d["device_id"] for d in shown["progress"]["devices"]] == ["dev-2"]
    await _add_device(api, "dev-1")  # the id is free again, with nothing of the old one
    assert (await _call(api, "GET", "/v1/devices/dev-1", 200))["events"] == []


async def test_device_routes_refuse_bad_input_and_small_roles(api: Api) -> None:
    await _add_device(api, "dev-1")
    for body, complaint in (
        ({"group": "bad group"}, "group 'bad group' must be"),
        ({"group": 7}, "field 'group' must be a string"),
        ({}, "field 'group' is required"),
        ({"group": "a", "device_id": "x"}, "unknown field"),
    ):
        error = (await _call(api, "PATCH", "/v1/devices/dev-1", 400, json=body))["error"]
        assert complaint in error, error
    await _call(api, "PATCH", "/v1/devices/nope", 404, json={"group": "a"})
    await _call(api, "DELETE", "/v1/devices/nope", 404)
    refused = await _call(api, "DELETE", "/v1/devices/a%20b", 400)
    assert "device id 'a b' must be letters" in refused["error"]
    viewer = (await _token(api, "viewer", "ro"))["token"]
    publisher = (await _token(api, "publisher", "ci"))["token"]
    for token in (viewer, publisher):
        await _call(api, "DELETE", "/v1/devices/dev-1", 403, token)
        await _call(api, "PATCH", "/v1/devices/dev-1", 403, token, json={"group": "a"})
    assert (await _call(api, "GET", "/v1/devices/dev-1", 200))["group"] == "lab"


async def test_pushing_the_same_file_again_names_the_version_it_made(
    api: Api, onnx_models: ModelSet
) -> None:
    first = await _push(api, onnx_models, allow_duplicate="false")
    model = onnx_models.classifier.onnx_path.read_bytes()
    refused = await _call(api, "POST", "/v1/models/clf/versions", 409, data=_form(model))
    assert "clf version 1 was built from this same file" in refused["error"]
    assert "allow_duplicate" in refused["error"]
    # Quantizing rewrites the artifact; the upload's own digest still finds the duplicate.
    quantized = await _push(api, onnx_models, quantize="int8")
    assert quantized["sha256"] != first["sha256"]
    assert quantized["build"]["source_sha256"] == first["build"]["source_sha256"]
    refused = await _call(
        api, "POST", "/v1/models/clf/versions", 409, data=_form(model, quantize="int8")
    )
    assert "clf version 1 was built" in refused["error"]
    bad = await _call(api, "POST", "/v1/models/clf/versions", 400,
                      data=_form(model, allow_duplicate="maybe"))  # fmt: skip
    assert "allow_duplicate must be true or false" in bad["error"]
    versions = (await _call(api, "GET", "/v1/models/clf/versions", 200))["versions"]
    assert [v["version"] for v in versions] == [1, 2]
    await _push(api, onnx_models, name="other", allow_duplicate="false")  # another model: fine
