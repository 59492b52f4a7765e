"""Experiments end to end: two real `edge-agent run` processes, the registry, mosquitto.

The treatment is deliberately worse (trained on shuffled labels) on the true labels the test
feeds back: the verdict must name the control, with a small p-value. The split must hold its
ratio, a key must reach one variant on both devices, a shadow must never change an answer, a
tampered experiment assignment is refused like any other, and a device whose memory budget
cannot hold both variants refuses the experiment and keeps serving the control.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edge_common.processes import LOCALHOST, free_port
from tests.e2e.conftest import collect_events, start_agent
from tests.support.agent import AgentProcess
from tests.support.fleet import TOPICS, Fleet
from tests.support.models import BuiltModel, build_classifier
from tests.support.registry import cli

GROUP = "trial"
DEVICES = ("trial-a", "trial-b")
SETTINGS = "[telemetry]\ninterval_s = 1.0\n[experiments]\nshadow_queue = 10000\n"
TIGHT = (  # 100 x the two model files is above 1 MiB: both variants cannot be held
    "[telemetry]\ninterval_s = 1.0\n"
    "[experiments]\nmemory_budget_mb = 1\nmemory_per_model_byte = 100\n"
)
SPLIT = 30
REQUESTS_PER_DEVICE = 300


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> tuple[BuiltModel, BuiltModel]:
    """A good classifier and a deliberately bad one, same io and evaluation rows."""
    root = tmp_path_factory.mktemp("experiment-models")
    good = build_classifier(root / "good.onnx", n_samples=600)
    bad = build_classifier(root / "bad.onnx", n_samples=600, shuffled_labels=True)
    return good, bad


def _labels(model: BuiltModel, rows: np.ndarray[Any, Any]) -> list[int]:
    session = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    return [int(v) for v in session.run(["label"], {"X": rows})[0]]


def _post(agent: AgentProcess, path: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(  # noqa: S310 - the agent's http URL
        agent.url + path, data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


def _infer(agent: AgentProcess, row: list[float], **extra: Any) -> Any:
    body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, len(row)], "data": [row]}],
            **extra}  # fmt: skip
    return _post(agent, "/v2/models/clf/infer", body)


def _registry(fleet: Fleet, path: str) -> Any:
    token = (fleet.home / "secrets" / "cli-token").read_text().strip()
    request = urllib.request.Request(  # noqa: S310 - the test registry's http URL
        f"{fleet.registry.url}{path}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


def _wait(
    predicate: Callable[[], Any], what: str, timeout: float = 90, seen: Callable[[], Any] = str
) -> Any:
    """Poll until `predicate()` is truthy (a liveness bound, not a timing assertion); the
    error shows `seen()`, what there was instead."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {seen()}")
        time.sleep(0.2)


def _name(agent: AgentProcess) -> str:
    return agent.state_dir.name  # the fleet names each state directory after its device


def _experiments(agent: AgentProcess) -> list[dict[str, Any]]:
    status = agent.get("/v1/status") or {}
    return list(status.get("experiments", []))


def _start(fleet: Fleet, *args: str) -> int:
    started = cli("experiment", "start", "clf", *args, "--json", *fleet.api())
    return int(json.loads(started.stdout)["id"])


def _variants(fleet: Fleet, experiment_id: int) -> dict[str, Any]:
    verdict = _registry(fleet, f"/v1/experiments/{experiment_id}")["verdict"]
    return {v["role"]: v for v in verdict["variants"]} | {"verdict": verdict}


@pytest.fixture(scope="module")
def pushed(fleet: Fleet, variants: tuple[BuiltModel, BuiltModel]) -> tuple[int, int]:
    """The good and the bad classifier as versions of `clf`, pushed once for the module."""
    good, bad = variants
    return fleet.push(good.onnx_path, "clf")["version"], fleet.push(bad.onnx_path, "clf")["version"]


def test_a_worse_treatment_loses_a_shadow_never_answers_and_tampering_is_refused(
    fleet: Fleet,
    agents: list[AgentProcess],
    variants: tuple[BuiltModel, BuiltModel],
    pushed: tuple[int, int],
) -> None:
    good, bad = variants
    v1, v2 = pushed
    trial = [start_agent(fleet, agents, device, GROUP, SETTINGS) for device in DEVICES]
    tight = start_agent(fleet, agents, "trial-tight", GROUP, TIGHT)
    fleet.deploy("clf", v1, GROUP)
    for agent in (*trial, tight):
        agent.wait_for_version("clf", v1)

    with fleet.registry_client() as watcher:
        watcher.subscribe(TOPICS.events(_name(tight)))
        split_id = _start(fleet, "--control", str(v1), "--treatment", str(v2),
                          "--split", str(SPLIT), "--group", GROUP)  # fmt: skip
        refused = collect_events(watcher, _name(tight), "rejected", timeout=90)[-1]
    assert (refused["reason"], refused["version"]) == ("memory_budget", v2), refused
    assert "memory budget" in refused["detail"]
    for agent in trial:
        _wait(lambda a=agent: _experiments(a), f"the split on {_name(agent)}")
    assert _experiments(tight) == [], "the tight device serves the control alone"
    assert tight.serving_version("clf") == v1

    # Random routing: the split ratio, and every answer says which version gave it.
    rows = good.X_eval.astype(np.float32)
    truth = [int(y) for y in good.y_eval]
    answered: list[tuple[AgentProcess, str, int]] = []  # (agent, answer id, row index)
    versions = []
    for agent in trial:
        for n in range(REQUESTS_PER_DEVICE):
            index = n % len(rows)
            answer = _infer(agent, rows[index].tolist())
            versions.append(int(answer["model_version"]))
            answered.append((agent, answer["id"], index))
    assert set(versions) == {v1, v2}
    share = versions.count(v2) / len(versions)
    # 600 draws of p = 0.3: one standard deviation is 0.0187; the tolerance is five.
    assert abs(share - SPLIT / 100) < 5 * 0.0187, share

    # A stable key reaches the same variant on both devices.
    for key in (f"customer-{n}" for n in range(20)):
        seen = {_infer(a, rows[0].tolist(), parameters={"experiment_key": key})["model_version"]
                for a in trial}  # fmt: skip
        assert len(seen) == 1, (key, seen)

    # The application's feedback: the true labels, batched per device.
    for agent in trial:
        items = [{"id": i, "label": truth[k]} for a, i, k in answered if a is agent]
        result = _post(agent, "/v2/models/clf/feedback", {"feedback": items})
        assert result["matched"] == REQUESTS_PER_DEVICE

    labelled = len(answered)

    def judged() -> dict[str, Any] | None:
        found = _variants(fleet, split_id)
        total = found["control"]["accuracy"]["n"] + found["treatment"]["accuracy"]["n"]
        return found if total == labelled else None

    found = _wait(judged, "the labelled answers of both devices at the registry",
                  seen=lambda: _variants(fleet, split_id))  # fmt: skip
    verdict = found["verdict"]
    control, treatment = found["control"], found["treatment"]
    assert (control["version"], treatment["version"]) == (v1, v2)
    assert (control["devices"], treatment["devices"]) == (2, 2)  # the tight one served none
    assert control["accuracy"]["value"] > treatment["accuracy"]["value"] + 0.2
    accuracy = verdict["tests"][0]
    assert (accuracy["metric"], accuracy["better"], accuracy["significant"]) == (
        "accuracy",
        v1,
        True,
    )
    assert accuracy["z"] < 0, "the treatment is the lower one"
    assert accuracy["p_value"] < 0.001
    assert verdict["winner"] == v1
    assert verdict["sentence"].startswith(f"V{v1} is better on accuracy: ")
    assert verdict["sentence"].endswith(f"p < 0.001, {labelled} labelled answers")
    shown = cli("experiment", "status", str(split_id), *fleet.api()).stdout
    assert verdict["sentence"] in shown

    # A tampered copy of the genuine experiment assignment: refused, nothing changes.
    device = _name(trial[0])
    with fleet.registry_client() as attacker:
        attacker.subscribe(TOPICS.assignment(device))
        genuine = _retained(attacker, TOPICS.assignment(device))
        envelope = json.loads(genuine)
        envelope["signed"]["seq"] += 1
        envelope["signed"]["models"]["clf"]["experiment"]["split_percent"] = 99
        attacker.subscribe(TOPICS.events(device))
        attacker.publish(TOPICS.assignment(device), json.dumps(envelope).encode(), retain=True)
        rejected = collect_events(attacker, device, "rejected")[-1]
        attacker.publish(TOPICS.assignment(device), genuine, retain=True)  # as it was
    assert rejected["reason"] == "signature_threshold", rejected
    assert [e["split_percent"] for e in _experiments(trial[0])] == [SPLIT]

    # Stop: every device back to the control alone.
    stopped = json.loads(cli("experiment", "stop", str(split_id), "--json", *fleet.api()).stdout)
    assert stopped["status"] == "stopped"
    for agent in trial:
        _wait(lambda a=agent: not _experiments(a), f"the end of the split on {_name(agent)}")

    # A shadow: every answer is the control's, computed by the control; agreement counted.
    shadow_id = _start(fleet, "--control", str(v1), "--shadow", str(v2), "--device", *DEVICES)
    for agent in trial:
        _wait(lambda a=agent: _experiments(a), f"the shadow on {_name(agent)}")
    sent = rows[:100]
    expected, shadowed = _labels(good, sent), _labels(bad, sent)
    for agent in trial:
        for index, row in enumerate(sent):
            answer = _infer(agent, row.tolist())
            assert answer["model_version"] == str(v1)
            assert answer["outputs"][0]["data"] == [expected[index]], "a shadow changed an answer"
    agreed = sum(a == b for a, b in zip(expected, shadowed, strict=True)) * len(trial)

    def compared() -> dict[str, Any] | None:
        shadow = _variants(fleet, shadow_id)["shadow"]
        return shadow if shadow["shadow"]["runs"] == 2 * len(sent) else None

    shadow = _wait(compared, "the shadow's comparisons at the registry",
                   seen=lambda: _variants(fleet, shadow_id))  # fmt: skip
    assert shadow["shadow"]["dropped"] == 0
    assert (shadow["agreement"]["n"], shadow["agreement"]["successes"]) == (2 * len(sent), agreed)
    assert shadow["answered"] == 0, "the shadow answered nothing"
    assert shadow["requests"] == 0


def test_a_split_survives_restarts_of_the_agent_even_offline(
    fleet: Fleet,
    agents: list[AgentProcess],
    variants: tuple[BuiltModel, BuiltModel],
    pushed: tuple[int, int],
) -> None:
    good, _bad = variants
    v1, v2 = pushed
    agent = start_agent(fleet, agents, "restart-a", "restart", SETTINGS)
    fleet.deploy("clf", v1, "restart")
    agent.wait_for_version("clf", v1)
    split_id = _start(fleet, "--control", str(v1), "--treatment", str(v2), "--split", "50",
                      "--device", _name(agent))  # fmt: skip
    running = _wait(lambda: _experiments(agent), "the split on the device")
    rows = good.X_eval.astype(np.float32)
    keys = [f"user-{n}" for n in range(30)]
    keyed = {key: _infer(agent, rows[0].tolist(), parameters={"experiment_key": key})
             ["model_version"] for key in keys}  # fmt: skip
    assert set(keyed.values()) == {str(v1), str(v2)}

    # A kill, then a start with no broker to be reached: only the state directory can say
    # what ran, and the store must hold the treatment's file (nothing can be downloaded).
    agent.kill()
    online = agent.config.read_text()
    agent.config.write_text(
        online.replace(f"{LOCALHOST}:{fleet.port}", f"{LOCALHOST}:{free_port()}")
    )
    for restart in (agent.kill, agent.stop):
        agent.start()
        resumed = _wait(lambda: _experiments(agent), "the split after the restart",
                        seen=lambda: agent.log_file.read_text()[-3000:])  # fmt: skip
        assert resumed == running, "the same experiment: variants, split and id"
        again = {key: _infer(agent, rows[0].tolist(), parameters={"experiment_key": key})
                 ["model_version"] for key in keyed}  # fmt: skip
        assert again == keyed, "each key reaches the variant it reached before the restart"
        restart()

    # Back online: the registry's retained assignment is the kept one; nothing changes.
    agent.config.write_text(online)
    agent.start()
    assert _wait(lambda: _experiments(agent), "the split back online") == running
    _wait(lambda: agent.get("/v1/status")["telemetry"]["reports"] >= 1, "a report upstream")
    assert _experiments(agent) == running
    cli("experiment", "stop", str(split_id), *fleet.api())
    _wait(lambda: not _experiments(agent), "the end of the split")


def _retained(client: Any, topic: str, timeout: float = 20) -> bytes:
    deadline = time.monotonic() + timeout
    while True:
        message = client.next_message(timeout=max(0.0, deadline - time.monotonic()))
        if message.topic == topic and message.payload:
            payload: bytes = message.payload
            return payload
