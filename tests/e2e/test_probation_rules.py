"""Probation that judges the model, end to end: a real `edge-agent run` and a real registry.

A model several times slower than the one it replaced, or one that predicts a single class
where the previous one spread its answers, is rolled back with its own reason; clean stops
(SIGTERM, as `systemctl restart` sends) during the probation of a first-ever version do not
count as crashes, and a device never ends up serving nothing because probation failed.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.conftest import collect_events, start_agent
from tests.support.agent import AgentProcess
from tests.support.fleet import TOPICS, Fleet
from tests.support.probation_models import FEATURES, probation_model

JUDGED = "[updates]\nprobation_s = 300.0\nprobation_requests = 12\nprobation_min_requests = 10\n"
ENDLESS = "[updates]\nprobation_s = 3600.0\nprobation_requests = 1000000\n"


@pytest.fixture(scope="module")
def kinds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("probation-kinds")
    return {kind: probation_model(kind, root / f"{kind}.onnx") for kind in
           ("good", "slow", "collapse")}  # fmt: skip


def _rows(seed: int) -> list[list[float]]:
    return np.random.default_rng(seed).normal(size=(1, FEATURES)).astype(float).tolist()


def _status(agent: AgentProcess, model: str) -> dict[str, object]:
    status = agent.get("/v1/status") or {}
    return dict(status.get("updates", {}).get(model) or {})


def _wait_phase(agent: AgentProcess, model: str, phase: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _status(agent, model).get("phase") == phase:
            return
        time.sleep(0.05)
    raise AssertionError(f"{model} never reached {phase}: {_status(agent, model)}")


def _serve(agent: AgentProcess, model: str, count: int, seed: int) -> None:
    for i in range(count):
        status, body = agent.infer(model, _rows(seed + i))
        assert status == 200, body


@pytest.mark.parametrize(("kind", "reason"), [("slow", "probation_latency"),
                                              ("collapse", "probation_collapse")])  # fmt: skip
def test_a_model_that_answers_worse_than_the_previous_one_is_rolled_back(
    fleet: Fleet, agents: list[AgentProcess], kinds: dict[str, Path], kind: str, reason: str
) -> None:
    name, device = f"judged-{kind}", f"judged-{kind}"
    v1 = fleet.push(kinds["good"], name)["version"]
    v2 = fleet.push(kinds[kind], name)["version"]
    agent = start_agent(fleet, agents, device, device, JUDGED)
    fleet.deploy(name, v1, device)
    agent.wait_for_version(name, v1)
    # Requests count once probation has begun, a moment after the version first answers.
    _wait_phase(agent, name, "probation")
    _serve(agent, name, 12, seed=0)  # its probation, and what the device remembers of it
    _wait_phase(agent, name, "idle")
    with fleet.registry_client() as watcher:
        watcher.subscribe(TOPICS.events(device))
        fleet.deploy(name, v2, device)
        agent.wait_for_version(name, v2)
        deadline, seed = time.monotonic() + 120, 100
        while agent.serving_version(name) == v2 and time.monotonic() < deadline:
            agent.infer(name, _rows(seed))  # rows as varied as v1's: only the model differs
            seed += 1
        events = collect_events(watcher, device, "rolled_back")
    assert (events[-1]["reason"], events[-1]["to_version"]) == (reason, v1), events[-1]
    assert agent.serving_version(name) == v1


def test_clean_restarts_during_a_first_probation_keep_the_model_serving(
    fleet: Fleet, agents: list[AgentProcess], kinds: dict[str, Path]
) -> None:
    name = device = "first-probation"
    version = fleet.push(kinds["good"], name)["version"]
    agent = start_agent(fleet, agents, device, device, ENDLESS)
    fleet.deploy(name, version, device)
    agent.wait_for_version(name, version)
    _wait_phase(agent, name, "probation")
    for _restart in range(3):  # past max_probation_restarts (2): systemctl restart, thrice
        agent.stop()
        agent.start()
        assert agent.serving_version(name) == version
        _wait_phase(agent, name, "probation")
        state = agent.get_state()["models"][name]
        assert (state["in_probation"], state["probation_restarts"]) == (True, 0)
    _serve(agent, name, 3, seed=0)
    agent.kill()  # a crash does count
    agent.start()
    assert agent.get_state()["models"][name]["probation_restarts"] == 1


def test_crashes_past_the_restart_limit_of_a_first_version_leave_it_serving(
    fleet: Fleet, agents: list[AgentProcess], kinds: dict[str, Path]
) -> None:
    name = device = "first-crashes"
    version = fleet.push(kinds["good"], name)["version"]
    agent = start_agent(fleet, agents, device, device, ENDLESS)
    fleet.deploy(name, version, device)
    agent.wait_for_version(name, version)
    _wait_phase(agent, name, "probation")
    for _crash in range(3):
        agent.kill()
        agent.start()
    assert agent.serving_version(name) == version, "nothing to roll back to: it keeps serving"
    _wait_phase(agent, name, "failed")
    error = str(_status(agent, name).get("last_error"))
    assert "restarted 3 times during probation" in error
    assert "no earlier version to roll back to" in error
    state = agent.get_state()["models"][name]
    assert (state["active"]["version"], state["in_probation"]) == (version, False)
    _serve(agent, name, 2, seed=5)
