"""Deploys that survive a lost answer: with an Idempotency-Key a retry replays, not repeats."""

from __future__ import annotations

from typing import Any

import pytest

from tests.registry.conftest import Api
from tests.registry.test_api import _add_device, _push
from tests.support.models import ModelSet

BODY = {"model": "clf", "version": 1, "group": "lab"}


async def _post(api: Api, path: str, body: dict[str, Any], key: str | None) -> Any:
    headers = api.auth() | ({"Idempotency-Key": key} if key is not None else {})
    return await api.client.post(path, json=body, headers=headers)


@pytest.fixture
async def fleet_api(api: Api, onnx_models: ModelSet) -> Api:
    await _push(api, onnx_models)
    await _push(api, onnx_models)
    await _add_device(api, "dev-1")
    return api


async def test_a_replayed_key_returns_the_stored_deployment_and_assigns_nothing_more(
    fleet_api: Api,
) -> None:
    api = fleet_api
    first = await _post(api, "/v1/deployments", BODY, "deploy-7f3a")
    assert first.status == 201, await first.text()
    again = await _post(api, "/v1/deployments", BODY, "deploy-7f3a")
    assert again.status == 200, await again.text()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == await first.json()
    assert len(await api.ctx.storage.deployments()) == 1
    assert (await api.ctx.storage.get_device("dev-1")).assignment_seq == 1


async def test_the_same_key_for_another_deployment_is_a_conflict(fleet_api: Api) -> None:
    api = fleet_api
    assert (await _post(api, "/v1/deployments", BODY, "k-1")).status == 201
    other = await _post(api, "/v1/deployments", {**BODY, "version": 2}, "k-1")
    assert other.status == 409
    error = (await other.json())["error"]
    assert "Idempotency-Key" in error
    assert "clf" in error
    assert len(await api.ctx.storage.deployments()) == 1
    assert (await api.ctx.storage.get_device("dev-1")).assigned["clf"]["version"] == 1


async def test_different_keys_make_different_deployments(fleet_api: Api) -> None:
    api = fleet_api
    assert (await _post(api, "/v1/deployments", BODY, "a")).status == 201
    assert (await _post(api, "/v1/deployments", BODY, "b")).status == 201
    assert (await _post(api, "/v1/deployments", BODY, None)).status == 201
    assert len(await api.ctx.storage.deployments()) == 3


@pytest.mark.parametrize("key", ["", " ", "x" * 201, "tab\there", "spa ce", "é-accent"], ids=repr)
async def test_a_malformed_key_is_refused_and_nothing_is_deployed(fleet_api: Api, key: str) -> None:
    api = fleet_api
    headers = api.auth() | {"Idempotency-Key": key}
    response = await api.client.post("/v1/deployments", json=BODY, headers=headers)
    assert response.status == 400
    assert "Idempotency-Key" in (await response.json())["error"]
    assert await api.ctx.storage.deployments() == []


async def test_a_replayed_rollback_rolls_back_once(fleet_api: Api) -> None:
    api = fleet_api
    for version in (1, 2):
        response = await _post(api, "/v1/deployments", {**BODY, "version": version}, None)
        assert response.status == 201
    body = {"group": "lab"}
    first = await _post(api, "/v1/models/clf/rollback", body, "rb-1")
    assert first.status == 201, await first.text()
    # A second rollback without the key would go back further; the replay must not.
    again = await _post(api, "/v1/models/clf/rollback", body, "rb-1")
    assert again.status == 200, await again.text()
    assert (await again.json())["id"] == (await first.json())["id"]
    assert len(await api.ctx.storage.deployments()) == 3
    assert (await api.ctx.storage.get_device("dev-1")).assignment_seq == 3


async def test_openapi_documents_the_idempotency_key(api: Api) -> None:
    document = await (await api.client.get("/v1/openapi.json")).json()
    for path in ("/v1/deployments", "/v1/models/{name}/rollback"):
        operation = document["paths"][path]["post"]
        names = [p.get("name") or p.get("$ref", "") for p in operation.get("parameters", [])]
        assert any("Idempotency" in name for name in names), path
        assert {"200", "201", "409"} <= set(operation["responses"]), path
