"""Experiments through the API: signed assignments, hostile requests, the verdict, promote, stop."""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

import pytest

from edge_protocol import TrustedState
from model_registry.statistics.points import points_from_telemetry
from model_registry.storage import DeviceReport
from tests.registry.conftest import Api
from tests.registry.test_api import _add_device, _push
from tests.support.models import ModelSet

SPLIT = {"model": "clf", "control": 1, "treatment": 2, "split": 10, "group": "lab"}


@pytest.fixture
async def lab(api: Api, onnx_models: ModelSet) -> dict[str, bytes]:
    """Versions 1 and 2 of clf, devices dev-1 and dev-2 in group lab; their roots."""
    await _push(api, onnx_models)
    await _push(api, onnx_models)
    roots = {}
    for device_id in ("dev-1", "dev-2"):
        bundle = (await _add_device(api, device_id))["bundle"]
        roots[device_id] = base64.b64decode(bundle["root.json"])
    return roots


async def _call(api: Api, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    response = await api.client.request(method, path, json=body, headers=api.auth())
    return response.status, await response.json()


async def test_a_split_signs_each_device_an_experiment_and_stop_takes_it_back(
    api: Api, lab: dict[str, bytes]
) -> None:
    status, started = await _call(api, "POST", "/v1/experiments", SPLIT)
    assert status == 201, started
    assert (started["mode"], started["treatment"], started["split"]) == ("split", 2, 10)
    assert started["devices"] == ["dev-1", "dev-2"]
    device = await api.ctx.storage.get_device("dev-1")
    assert device.assignment is not None
    assignment = TrustedState(lab["dev-1"], device_id="dev-1").verify_assignment(device.assignment)
    assert assignment.spec_version == "2.0"
    experiment = assignment.models["clf"].experiment
    assert experiment is not None
    assert (experiment.experiment_id, experiment.mode, experiment.split_percent) == (
        started["id"], "split", 10,
    )  # fmt: skip
    assert (assignment.models["clf"].version, experiment.candidate.version) == (1, 2)

    again, refused = await _call(api, "POST", "/v1/experiments", {**SPLIT, "devices": ["dev-2"],
                                                                  "group": None})  # fmt: skip
    assert again == 400, refused  # group and devices together
    clash, refused = await _call(api, "POST", "/v1/experiments", SPLIT)
    assert clash == 409
    assert f"experiment {started['id']}" in refused["error"]

    status, stopped = await _call(api, "POST", f"/v1/experiments/{started['id']}/stop")
    assert (status, stopped["status"]) == (200, "stopped")
    device = await api.ctx.storage.get_device("dev-1")
    assert device.assignment is not None
    back = TrustedState(lab["dev-1"], device_id="dev-1").verify_assignment(device.assignment)
    assert back.models["clf"].experiment is None
    assert back.spec_version == "1.0"
    assert (await _call(api, "POST", f"/v1/experiments/{started['id']}/stop"))[0] == 409


HOSTILE: list[tuple[dict[str, Any], int, str]] = [
    ({**SPLIT, "shadow": 2}, 400, "exactly one of"),
    ({k: v for k, v in SPLIT.items() if k != "treatment"}, 400, "exactly one of"),
    ({k: v for k, v in SPLIT.items() if k != "split"}, 400, "'split' is required"),
    ({**SPLIT, "split": 0}, 400, "1 to 99"),
    ({**SPLIT, "split": 100}, 400, "1 to 99"),
    ({**SPLIT, "split": "10"}, 400, "'split' must be an integer"),
    ({**SPLIT, "treatment": 1}, 400, "both version 1"),
    ({"model": "clf", "control": 1, "shadow": 2, "split": 5, "group": "lab"}, 400, "no split"),
    ({**SPLIT, "treatment": 9}, 404, "no version 9"),
    ({**SPLIT, "model": "clff"}, 404, "clf"),
    ({**SPLIT, "group": "nowhere"}, 404, "nowhere"),
    ({**SPLIT, "name": "a/b"}, 400, "not valid"),
    ({**SPLIT, "colour": "red"}, 400, "unknown field"),
]


@pytest.mark.parametrize(("body", "status", "message"), HOSTILE)
async def test_a_bad_start_is_a_4xx_naming_the_problem(
    api: Api, lab: dict[str, bytes], body: dict[str, Any], status: int, message: str
) -> None:
    got, answer = await _call(api, "POST", "/v1/experiments", body)
    assert got == status, answer
    assert message in answer["error"]
    assert await api.ctx.storage.experiments() == []


def _variant(
    answered: int,
    labels: int = 0,
    correct: int = 0,
    shadow: dict[str, int] | None = None,
    values: tuple[int, float, float] = (0, 0.0, 0.0),  # n, sum and sum of squares of |errors|
) -> dict[str, Any]:
    n, total, squares = values
    return {
        "requests": answered, "2xx": answered, "4xx": 0, "5xx": 0, "rejected_503": 0,
        "latency_ms": {"p50": 1.0, "p99": 2.0, "max": 3.0, "samples": answered},
        "experiment": {
            "answered": answered,
            "feedback": {"labels": labels, "correct": correct, "values": n,
                         "abs_error_sum": total, "abs_error_sq_sum": squares},
            "shadow": {"runs": 0, "failed": 0, "dropped": 0, "labels": 0, "agreed": 0,
                       "values": 0, "abs_diff_sum": 0.0, **(shadow or {})},
        },
    }  # fmt: skip


async def _report(api: Api, device_id: str, seq: int, versions: dict[str, Any]) -> None:
    received = api.ctx.clock() + timedelta(seconds=seq)
    body = {"schema": 1, "device_id": device_id, "msg_seq": seq, "msg_epoch": "e",
            "interval_s": 30.0, "models": {"clf": {"versions": versions}}}  # fmt: skip
    points = points_from_telemetry(device_id, received, body)
    report = DeviceReport(device_id, "telemetry", received, body, msg_epoch="e", msg_seq=seq,
                          points=points)  # fmt: skip
    await api.ctx.storage.add_device_reports([report])


async def test_the_verdict_adds_up_devices_and_promote_keeps_a_winning_control(
    api: Api, lab: dict[str, bytes]
) -> None:
    _, started = await _call(api, "POST", "/v1/experiments", {**SPLIT, "split": 50})
    path = f"/v1/experiments/{started['id']}"
    _, early = await _call(api, "GET", path)
    assert early["verdict"]["sentence"].startswith("No labelled answers yet")
    assert (await _call(api, "POST", f"{path}/promote"))[0] == 409

    for seq, device in enumerate(("dev-1", "dev-2"), start=1):  # 90% against 80%, in halves
        await _report(
            api, device, seq, {"1": _variant(600, 500, 450), "2": _variant(600, 500, 400)}
        )
    _, judged = await _call(api, "GET", path)
    verdict = judged["verdict"]
    control, treatment = verdict["variants"]
    assert (control["accuracy"]["n"], control["accuracy"]["successes"]) == (1000, 900)
    assert (treatment["devices"], treatment["requests"]) == (2, 1200)
    assert control["accuracy"]["ci95"][0] < 0.9 < control["accuracy"]["ci95"][1]
    accuracy = verdict["tests"][0]
    assert (accuracy["metric"], accuracy["better"], accuracy["significant"]) == (
        "accuracy",
        1,
        True,
    )
    assert accuracy["z"] < 0
    assert accuracy["p_value"] < 0.001
    assert verdict["winner"] == 1
    assert verdict["sentence"] == (
        "V1 is better on accuracy: 90.0% vs 80.0%, p < 0.001, 2,000 labelled answers"
    )

    status, promoted = await _call(api, "POST", f"{path}/promote")
    assert status == 200, promoted
    assert (promoted["status"], promoted["deployment"]) == ("promoted", None)
    assert promoted["outcome"] == "control v1 kept"
    assert (await api.ctx.storage.get_device("dev-2")).assigned["clf"] == {
        k: v for k, v in (await api.ctx.storage.get_device("dev-2")).assigned["clf"].items()
        if k != "experiment"
    }  # fmt: skip


async def test_a_regressors_verdict_is_the_mean_absolute_error_with_welchs_test(
    api: Api, lab: dict[str, bytes]
) -> None:
    _, started = await _call(api, "POST", "/v1/experiments", {**SPLIT, "split": 50})
    path = f"/v1/experiments/{started['id']}"
    # 400 values each: control errors of mean 0.5 and variance 0.04, treatment 0.6 and 0.09
    # (sum of squares = (n - 1) variance + n mean^2).
    control_values = (400, 200.0, 399 * 0.04 + 400 * 0.25)
    treatment_values = (400, 240.0, 399 * 0.09 + 400 * 0.36)
    await _report(api, "dev-1", 1, {"1": _variant(400, values=control_values),
                                     "2": _variant(400, values=treatment_values)})  # fmt: skip

    _, judged = await _call(api, "GET", path)

    verdict = judged["verdict"]
    control, treatment = verdict["variants"]
    assert control["mean_abs_error"]["value"] == pytest.approx(0.5)
    assert control["mean_abs_error"]["ci95"] == pytest.approx(
        [0.5 - 0.0196, 0.5 + 0.0196], abs=1e-4
    )
    assert treatment["mean_abs_error"]["ci95"] == pytest.approx(
        [0.6 - 0.0294, 0.6 + 0.0294], abs=1e-4
    )
    test = verdict["tests"][0]
    assert (test["metric"], test["test"], test["better"]) == (
        "mean absolute error",
        "Welch z-test",
        1,
    )
    assert test["z"] == pytest.approx(0.1 / (0.09 / 400 + 0.04 / 400) ** 0.5)  # 5.547
    assert test["p_value"] < 0.001
    assert verdict["winner"] == 1
    assert verdict["sentence"] == (
        "V1 is better on mean absolute error: 0.5 (95% CI 0.4804 to 0.5196) vs "
        "0.6 (95% CI 0.5706 to 0.6294), p < 0.001, 800 labelled values"
    )


async def test_a_winning_treatment_is_deployed_and_too_few_labels_say_how_many_more(
    api: Api, lab: dict[str, bytes]
) -> None:
    _, started = await _call(api, "POST", "/v1/experiments", SPLIT)
    path = f"/v1/experiments/{started['id']}"
    await _report(api, "dev-1", 1, {"1": _variant(100, 100, 88), "2": _variant(10, 10, 9)})
    _, judged = await _call(api, "GET", path)
    assert judged["verdict"]["winner"] is None
    assert judged["verdict"]["needed_per_variant"] > 1000
    assert judged["verdict"]["sentence"].startswith(
        "No significant difference on accuracy yet: V2 90.0% vs V1 88.0%"
    )
    conflict, refused = await _call(api, "POST", f"{path}/promote")
    assert conflict == 409
    assert "no winner yet" in refused["error"]

    await _report(
        api, "dev-2", 2, {"1": _variant(3000, 3000, 2640), "2": _variant(3000, 3000, 2790)}
    )
    status, promoted = await _call(api, "POST", f"{path}/promote")
    assert status == 200, promoted
    assert promoted["outcome"] == "v2 promoted: a staged rollout to group lab"
    rollout = promoted["rollout"]
    assert (rollout["version"], rollout["group"], rollout["state"]) == (2, "lab", "running")
    assert promoted["deployment"] is None
    # The first wave (5% of two devices: one) runs v2; the other is back on v1 alone.
    assigned = [(await api.ctx.storage.get_device(d)).assigned["clf"] for d in ("dev-1", "dev-2")]
    assert sorted(a["version"] for a in assigned) == [1, 2]
    assert not any("experiment" in a for a in assigned)


async def test_an_experiment_on_devices_is_promoted_by_one_deployment(
    api: Api, lab: dict[str, bytes]
) -> None:
    body = {**SPLIT, "devices": ["dev-1"]}
    del body["group"]
    _, started = await _call(api, "POST", "/v1/experiments", body)
    await _report(
        api, "dev-1", 1, {"1": _variant(2000, 2000, 1700), "2": _variant(2000, 2000, 1900)}
    )
    status, promoted = await _call(api, "POST", f"/v1/experiments/{started['id']}/promote")
    assert status == 200, promoted
    assert (promoted["rollout"], promoted["deployment"]["devices"]) == (None, ["dev-1"])
    assert (await api.ctx.storage.get_device("dev-1")).assigned["clf"]["version"] == 2
    assert (await api.ctx.storage.get_device("dev-2")).assigned == {}


async def test_a_shadow_reports_its_agreement(api: Api, lab: dict[str, bytes]) -> None:
    body = {"model": "clf", "control": 1, "shadow": 2, "devices": ["dev-1"]}
    status, started = await _call(api, "POST", "/v1/experiments", body)
    assert (status, started["shadow"], started["split"]) == (201, 2, None)
    await _report(
        api,
        "dev-1",
        1,
        {
            "1": _variant(400),
            "2": _variant(0, shadow={"runs": 390, "labels": 390, "agreed": 351, "dropped": 10}),
        },
    )
    _, judged = await _call(api, "GET", f"/v1/experiments/{started['id']}")
    shadow = judged["verdict"]["variants"][1]
    assert (shadow["role"], shadow["agreement"]["value"]) == ("shadow", 0.9)
    assert judged["verdict"]["sentence"].startswith(
        "V2 agrees with V1 on 90.0% of 390 answers (95% CI"
    )
    assert judged["verdict"]["sentence"].endswith("10 inputs dropped under load")


async def test_a_deploy_rollback_or_rollout_reaching_an_experiment_is_refused_unless_forced(
    api: Api, lab: dict[str, bytes]
) -> None:
    from model_registry.cli.parser import build_parser

    _, started = await _call(api, "POST", "/v1/experiments", SPLIT)
    path = f"/v1/experiments/{started['id']}"
    deploy = {"model": "clf", "version": 2, "devices": ["dev-1"]}
    for method, route, body in (
        ("POST", "/v1/deployments", deploy),
        ("POST", "/v1/models/clf/rollback", {"devices": ["dev-1"]}),
        ("POST", "/v1/rollouts", {"model": "clf", "version": 2, "group": "lab"}),
    ):
        status, refused = await _call(api, method, route, body)
        assert status == 409, refused
        assert f"experiment {started['id']}" in refused["error"]
        assert "experiment stop" in refused["error"]
        assert "--force" in refused["error"]
    assert (await _call(api, "GET", path))[1]["status"] == "running"
    assert await api.ctx.storage.deployments("clf") == []

    status, deployed = await _call(api, "POST", "/v1/deployments", {**deploy, "force": True})

    assert status == 201, deployed
    _, ended = await _call(api, "GET", path)
    assert ended["status"] == "stopped"
    assert "a forced deploy of clf to dev-1 reached 1 of its devices" in ended["outcome"]
    one, two = [(await api.ctx.storage.get_device(d)).assigned["clf"] for d in ("dev-1", "dev-2")]
    assert (one["version"], "experiment" in one) == (2, False)
    assert (two["version"], "experiment" in two) == (1, False), "back on the control alone"
    assert (await _call(api, "POST", "/v1/deployments", {**deploy, "force": "yes"}))[0] == 400
    parsed = build_parser().parse_args(["deploy", "clf", "2", "--device", "dev-1", "--force"])
    assert parsed.force


async def test_the_check_is_made_again_under_the_lock_and_a_later_wave_leaves_such_devices_out(
    api: Api, lab: dict[str, bytes]
) -> None:
    from model_registry.errors import ConflictError
    from model_registry.rollouts.changes import start_wave
    from model_registry.rollouts.policy import parse_policy
    from model_registry.services.deployments import Target, deploy_once

    policy = {"steps": [50, 100], "canary": ["dev-1"], "manual": True}
    body = {"model": "clf", "version": 2, "group": "lab", "policy": policy}
    status, rollout = await _call(api, "POST", "/v1/rollouts", body)
    assert status == 201, rollout
    shadow = {"model": "clf", "control": 1, "shadow": 2, "devices": ["dev-2"]}
    status, started = await _call(api, "POST", "/v1/experiments", shadow)
    assert status == 201, started

    # As if the experiment had started between the API's check and the deploy's lock.
    with pytest.raises(ConflictError, match=f"experiment {started['id']}"):
        await deploy_once(api.ctx, "clf", 1, Target(devices=("dev-2",)), created_by="t", guard=True)

    record = await api.ctx.storage.get_rollout(rollout["id"])
    after = await start_wave(api.ctx, record, parse_policy(policy), "test")
    assert after.waves[-1].devices == ()
    _, shown = await _call(api, "GET", f"/v1/rollouts/{rollout['id']}")
    assert shown["decisions"][-1]["action"] == "wave_started"
    assert "1 device(s) in a running experiment are left out" in str(shown["decisions"][-1])
    assert (await api.ctx.storage.get_device("dev-2")).assigned["clf"]["experiment"]
