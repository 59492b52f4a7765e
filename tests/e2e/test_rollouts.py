"""Staged rollouts end to end: a `model-registry serve`, mosquitto and eight `edge-agent run`.

A version several times slower than the one it replaces, and one that predicts a single class
(both answer; probation on the devices is told not to judge latency or classes), halt in their
first wave on the registry's latency and prediction-shift gates, are given back there, and never
reach the other devices. A good version reaches every device, wave by
wave. A registry killed (SIGKILL) mid-rollout resumes after a restart: no wave starts twice and
none is skipped.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import CHUNK
from tests.support.agent import AgentProcess
from tests.support.broker import BrokerFactory
from tests.support.fleet import Fleet
from tests.support.probation_models import FEATURES, probation_model
from tests.support.registry import cli, cli_json

GROUP = "ring"
MODEL = "ring"
DEVICES = tuple(f"ring-{i}" for i in range(8))
# Probation short and blind to latency (the registry's gate is under test), reports every second.
AGENT_TOML = (
    "[updates]\nprobation_s = 1.0\nprobation_requests = 5\nprobation_max_latency_ratio = 0\n"
    "probation_max_class_share = 1.0\n[telemetry]\ninterval_s = 1.0\n"
)
POLICY = """\
soak = "2s"
min_requests = 40
latency_floor_ms = 20.0  # a good version (2 to 8 ms) stays far below 3 x 20 ms
max_latency_ratio = 3.0
max_error_rate = 0.2
success_percent = 100
"""
LIMITS = {"latency": 3.0, "prediction_shift": 0.25}
WAIT_S = 180.0  # a bound for a loaded 2-core machine, not a timing claim


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("rollouts")
    factory = BrokerFactory(root / "brokers")
    fleet = Fleet(root, factory)
    fleet.start(
        chunk_size_kib=CHUNK // 1024,
        settings=(("check_interval_s = 5.0", "check_interval_s = 0.3"),),
    )
    yield fleet
    fleet.stop()
    factory.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rollout-models")
    return {
        "good": probation_model("good", root / "good.onnx"),
        "slow": probation_model("slow", root / "slow.onnx", slow_steps=8000),
        "collapse": probation_model("collapse", root / "collapse.onnx"),
    }


@pytest.fixture(scope="module")
def devices(ring: Fleet, models: dict[str, Path]) -> Iterator[list[AgentProcess]]:
    """Eight agents serving version 1 of `ring`, with requests flowing to each all along."""
    agents = [ring.agent(device, GROUP, AGENT_TOML) for device in DEVICES]
    traffic = Traffic(agents)
    try:
        for agent in agents:
            agent.start()
        v1 = push(ring, models["good"])
        ring.deploy(MODEL, v1, GROUP)
        for agent in agents:
            agent.wait_for_version(MODEL, v1, timeout=WAIT_S)
        traffic.start()
        yield agents
    finally:
        traffic.stop()
        for agent in agents:
            agent.kill()


class Traffic:
    """One thread sending inference requests to every agent in turn, as applications would."""

    def __init__(self, agents: list[AgentProcess]) -> None:
        self._agents = agents
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        rows = np.random.default_rng(0).normal(size=(64, 1, FEATURES)).tolist()
        turn = 0
        while not self._stop.is_set():
            for agent in self._agents:
                agent.infer(MODEL, rows[turn % len(rows)])  # errors count in telemetry
            turn += 1
            self._stop.wait(0.02)


def push(fleet: Fleet, model: Path) -> int:
    version: int = fleet.push(model, MODEL, "--allow-duplicate")["version"]
    return version


def api_get(fleet: Fleet, path: str) -> Any:
    token = (fleet.home / "secrets" / "cli-token").read_text().strip()
    request = urllib.request.Request(  # noqa: S310 - the test registry's http URL
        fleet.registry.url + path, headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.loads(response.read())


def wait_for(what: str, check: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    """The first true value of `check`, polled; AssertionError naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def start(fleet: Fleet, version: int, tmp: Path, *flags: str) -> dict[str, Any]:
    policy = tmp / "policy.toml"
    policy.write_text(POLICY)
    args = ["rollout", "start", MODEL, str(version), "--group", GROUP, "--policy", str(policy)]
    status: dict[str, Any] = cli_json(*args, *flags, *fleet.api())
    return status


def status(fleet: Fleet, rollout_id: int) -> dict[str, Any]:
    shown: dict[str, Any] = api_get(fleet, f"/v1/rollouts/{rollout_id}")
    return shown


def serving(agents: list[AgentProcess]) -> dict[str, int | None]:
    return {DEVICES[i]: agent.serving_version(MODEL) for i, agent in enumerate(agents)}


@pytest.mark.parametrize(("kind", "gate"), [("slow", "latency"), ("collapse", "prediction_shift")])
def test_a_bad_version_halts_in_its_first_wave_and_is_given_back_there(
    ring: Fleet, devices: list[AgentProcess], models: dict[str, Path], tmp_path: Path, *,
    kind: str, gate: str,
) -> None:  # fmt: skip
    before = serving(devices)
    (current,) = set(before.values())
    assert current is not None
    bad = push(ring, models[kind])
    started = start(ring, bad, tmp_path, "--steps", "25,100")
    first_wave = set(started["waves"][0]["devices"])
    assert len(first_wave) == 2
    halted = wait_for(
        "the rollout to halt",
        lambda: (s := status(ring, started["id"]))["state"] == "halted" and s,
    )
    halt = halted["halt"]
    assert halt["gate"] == gate, halt
    assert halt["measured"] > halt["limit"] == LIMITS[gate]
    assert set(halt["devices"]) <= first_wave
    assert halt["devices"]
    assert f"gate {gate}" in halt["reason"]
    assert [w["state"] for w in halted["waves"]] != ["passed", "passed"]
    assert len(halted["waves"]) == 1  # the second wave never started
    actions = [d["action"] for d in halted["decisions"]]
    assert actions == ["started", "wave_started", "wave_settled", "halted", "rolled_back"]
    for i, agent in enumerate(devices):
        agent.wait_for_version(MODEL, current, timeout=WAIT_S)  # the first wave got it back
        if DEVICES[i] not in first_wave:
            shown = api_get(ring, f"/v1/devices/{DEVICES[i]}?events=200")
            mentioned = {e["body"].get("version") for e in shown["events"]}
            assert bad not in mentioned, f"{DEVICES[i]} heard of version {bad}"
    targeted = {d for dep in cli_json("deployments", "list", *ring.api())["deployments"]
                if dep["version"] == bad for d in dep["devices"]}  # fmt: skip
    assert targeted == first_wave


def test_a_good_version_reaches_every_device_wave_by_wave(
    ring: Fleet, devices: list[AgentProcess], models: dict[str, Path], tmp_path: Path
) -> None:
    good = push(ring, models["good"])
    started = start(ring, good, tmp_path, "--steps", "25,50,100")
    followed = cli("rollout", "status", str(started["id"]), "--wait", *ring.api(), timeout=400)
    assert "completed" in followed.stdout, followed.stdout
    assert "[####################] 4/4 activated, passed" in followed.stdout
    final = status(ring, started["id"])
    assert final["state"] == "completed"
    assert [len(w["devices"]) for w in final["waves"]] == [2, 2, 4]
    _each_wave_started_after_the_previous_passed(final)
    assert set(serving(devices).values()) == {good}
    listed = cli("rollout", "list", *ring.api()).stdout.splitlines()
    mine = [line.split() for line in listed if line.split()[:1] == [str(started["id"])]]
    assert mine[0][1:5] == ["completed", MODEL, str(good), GROUP], listed


def _each_wave_started_after_the_previous_passed(rollout: dict[str, Any]) -> None:
    actions = [(d["action"], d["numbers"].get("wave")) for d in rollout["decisions"]]
    starts = [i for i, (action, _) in enumerate(actions) if action == "wave_started"]
    passes = [i for i, (action, _) in enumerate(actions) if action == "wave_passed"]
    assert len(starts) == len(passes) == len(rollout["waves"])
    assert all(p < s for p, s in zip(passes, starts[1:], strict=False))
    assert [actions[i][1] for i in starts] == list(range(1, len(starts) + 1))


def test_a_registry_killed_mid_rollout_resumes_where_it_was(
    ring: Fleet, devices: list[AgentProcess], models: dict[str, Path], tmp_path: Path
) -> None:
    good = push(ring, models["good"])
    started = start(ring, good, tmp_path, "--steps", "25,50,100")
    wait_for("the second wave to start", lambda: status(ring, started["id"])["wave"] >= 2)
    ring.registry.kill()
    ring.registry.start()
    ring.wait_for_broker_link()
    final = wait_for(
        "the rollout to complete after the restart",
        lambda: (s := status(ring, started["id"]))["state"] == "completed" and s,
    )
    assert [len(w["devices"]) for w in final["waves"]] == [2, 2, 4]
    moved = [d for w in final["waves"] for d in w["devices"]]
    assert sorted(moved) == sorted(DEVICES)  # none skipped, none moved twice
    _each_wave_started_after_the_previous_passed(final)
    deployments = [dep for dep in cli_json("deployments", "list", *ring.api())["deployments"]
                   if dep["version"] == good]  # fmt: skip
    assert len(deployments) == 3  # one per wave: no wave started twice
    for agent in devices:
        agent.wait_for_version(MODEL, good, timeout=WAIT_S)
