"""The rollout routes: start with a JSON policy, status, list, pause, resume, abort, /metrics;
every refusal a JSON 4xx naming what is wrong."""

from __future__ import annotations

from typing import Any

import pytest

from edge_protocol import AssignedModel
from tests.registry.conftest import Api
from tests.support.storage_records import SHA, device, release

GROUP = tuple(f"d{i}" for i in range(4))


@pytest.fixture
async def fleet(api: Api) -> Api:
    storage = api.ctx.storage
    for version in (1, 2):
        await storage.add_release(release("mnist", version))
    entry = AssignedModel(1, SHA, 1234).to_dict()
    for device_id in GROUP:
        await storage.add_device(device(device_id, "lab"))
        await storage.set_assignment(device_id, 1, b"v1", {"mnist": entry})
    return api


async def _call(api: Api, method: str, path: str, status: int, **kwargs: Any) -> Any:
    response = await api.client.request(method, path, headers=api.auth(), **kwargs)
    body = await response.json()
    assert response.status == status, body
    return body


START = {"model": "mnist", "version": 2, "group": "lab"}


async def test_a_rollout_through_rest(fleet: Api) -> None:
    policy = {"steps": [50, 100], "soak": "3s", "canary": ["d3"], "manual": True}
    started = await _call(fleet, "POST", "/v1/rollouts", 201, json={**START, "policy": policy})
    assert (started["state"], started["wave"], started["devices_moved"]) == ("running", 1, 1)
    assert started["policy"]["soak"] == 3.0
    assert started["policy"]["canary"] == ["d3"]
    assert [w["state"] for w in started["waves"]] == ["moving", "planned"]
    assert started["waves"][0]["devices"] == ["d3"]
    assert sorted(started["waves"][1]["devices"]) == ["d0", "d1", "d2"]
    assert [d["action"] for d in started["decisions"]] == ["started", "wave_started"]
    (install,) = started["gates"]  # the health gates once the wave settled
    assert (install["gate"], install["held"]) == ("install", None)
    assert started["decisions"][0]["actor"] == "token:admin"

    rollout_id = started["id"]
    shown = await _call(fleet, "GET", f"/v1/rollouts/{rollout_id}", 200)
    assert shown["waves"][0]["deployment"] is not None
    listed = (await _call(fleet, "GET", "/v1/rollouts?model=mnist", 200))["rollouts"]
    assert [r["id"] for r in listed] == [rollout_id]
    assert (await _call(fleet, "GET", "/v1/rollouts?active=true", 200))["rollouts"] == listed

    paused = await _call(fleet, "POST", f"/v1/rollouts/{rollout_id}/pause", 200)
    assert paused["state"] == "paused"
    refused = await _call(fleet, "POST", f"/v1/rollouts/{rollout_id}/pause", 409)
    assert "is paused" in refused["error"]
    metrics = await (await fleet.client.get("/metrics", headers=fleet.auth())).text()
    assert 'model_registry_rollouts{state="paused"} 1' in metrics
    assert f'model_registry_rollout_wave{{rollout="{rollout_id}",model="mnist"' in metrics
    resumed = await _call(fleet, "POST", f"/v1/rollouts/{rollout_id}/resume", 200)
    assert resumed["state"] == "running"
    aborted = await _call(fleet, "POST", f"/v1/rollouts/{rollout_id}/abort", 200)
    assert aborted["state"] == "aborted"
    assert aborted["halt"]["reason"] == "aborted by token:admin"
    assert aborted["waves"][0]["rollbacks"]
    assert (await _call(fleet, "GET", "/v1/rollouts?active=true", 200))["rollouts"] == []


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({**START, "policy": {"steps": [50]}}, 400, "must end at 100"),
        ({**START, "policy": {"soon": 1}}, 400, "field 'policy': unknown setting 'soon'"),
        ({**START, "policy": {"soak": "soon!"}}, 400, "duration such as"),
        ({**START, "policy": {"stepz": [100]}}, 400, "did you mean 'steps'"),
        ({**START, "policy": [1]}, 400, "must be an object"),
        ({**START, "policy": {"canary": ["d9"]}}, 404, "canary 'd9' is not a device of group"),
        ({**START, "group": "lbb"}, 404, "group 'lbb' has no devices"),
        ({**START, "version": 7}, 404, "has no version 7"),
        ({**START, "model": "mnsit"}, 404, "no model 'mnsit'"),
        ({**START, "extra": 1}, 400, "unknown field 'extra'"),
        ({"model": "mnist", "version": 2}, 400, "'group' is required"),
    ],
)
async def test_a_bad_start_is_a_4xx_naming_what_is_wrong(
    fleet: Api, body: dict[str, Any], status: int, message: str
) -> None:
    error = (await _call(fleet, "POST", "/v1/rollouts", status, json=body))["error"]
    assert message in error
    assert await fleet.ctx.storage.rollouts() == []
    assert await fleet.ctx.storage.deployments() == []


async def test_a_second_active_rollout_is_a_conflict_and_unknown_ids_are_404(fleet: Api) -> None:
    first = await _call(fleet, "POST", "/v1/rollouts", 201, json=START)
    error = (await _call(fleet, "POST", "/v1/rollouts", 409, json=START))["error"]
    assert f"rollout {first['id']}" in error
    for path in ("/v1/rollouts/99", "/v1/rollouts/99/abort"):
        method = "GET" if path.count("/") == 3 else "POST"
        assert "no rollout 99" in (await _call(fleet, method, path, 404))["error"]
    assert "whole number" in (await _call(fleet, "GET", "/v1/rollouts/x", 400))["error"]
    assert "true or false" in (await _call(fleet, "GET", "/v1/rollouts?active=1", 400))["error"]
