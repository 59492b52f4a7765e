"""A full disk under a real `edge-agent run`: every update step ends reported, nothing hangs.

The agent's state directory is a small tmpfs that the test fills with a filler file at the
moment it wants writes to fail (ENOSPC), then empties again. The agent must report the failure
upstream while the disk is still full, stay connected to the broker, and finish (commit, or
apply the waiting assignment) by itself once there is space again, without a restart.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Models, collect_events
from tests.support.agent import AgentProcess
from tests.support.broker import MqttTestClient
from tests.support.disk import SmallDisk, small_disk
from tests.support.fleet import TOPICS, Fleet

DISK_BYTES = 4 * 1024 * 1024
# Probation ends on the request count, which the test drives, never on a clock it races.
PROBATION_BY_REQUESTS = "[updates]\nprobation_requests = 3\nprobation_s = 3600\n"
FAST_RETRY = "write_retry_min_s = 0.2\nwrite_retry_max_s = 1.0\n"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """The agent's state directory: a small tmpfs."""
    with small_disk(tmp_path / "disk", DISK_BYTES) as mounted:
        yield mounted


@pytest.fixture
def disk_agents(disk: SmallDisk) -> Iterator[list[AgentProcess]]:
    """Agents on the small disk, killed before it is unmounted."""
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.kill()


def _start_on(
    disk: SmallDisk, fleet: Fleet, agents: list[AgentProcess], device: str, extra: str
) -> AgentProcess:
    agent = fleet.agent(device, device, extra)
    # The mount point itself: the agent's log goes next to it, on the ordinary disk.
    agent.state_dir = disk.path
    agents.append(agent)
    agent.start()
    return agent


def _wait(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _model_status(agent: AgentProcess, model: str) -> dict[str, Any]:
    status = agent.get("/v1/status") or {}
    return dict(status.get("updates", {}).get(model) or {})


def _settled(agent: AgentProcess, model: str, version: int) -> bool:
    status = _model_status(agent, model)
    return status.get("phase") == "idle" and (status.get("active") or {}).get("version") == version


def _spool_drained(agent: AgentProcess) -> bool:
    # Sent messages are deleted from the spool; none may free space once the disk is full.
    status = agent.get("/v1/status") or {}
    return status.get("telemetry", {}).get("spool", {}).get("pending") == 0


def _registry_device(fleet: Fleet, device: str) -> dict[str, Any]:
    token = (fleet.home / "secrets" / "cli-token").read_text().strip()
    request = urllib.request.Request(  # noqa: S310 - the test registry's http URL
        f"{fleet.registry.url}/v1/devices/{device}",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        body: dict[str, Any] = json.loads(response.read())
        return body


def _retained_state(fleet: Fleet, device: str) -> dict[str, Any]:
    with fleet.registry_client() as probe:
        probe.subscribe(TOPICS.state(device))
        state: dict[str, Any] = json.loads(probe.next_message(timeout=10).payload)
        return state


def _failed_event(watcher: MqttTestClient, device: str, version: int) -> dict[str, Any]:
    events = collect_events(watcher, device, "failed")
    failure = events[-1]
    assert (failure["model"], failure["version"]) == ("clf", version), events
    return failure


def test_a_disk_that_fills_during_probation_reports_and_commits_once_space_is_back(
    disk: SmallDisk,
    fleet: Fleet,
    models: Models,
    releases: dict[str, int],
    disk_agents: list[AgentProcess],
) -> None:
    device = "full-probation"
    extra = PROBATION_BY_REQUESTS + FAST_RETRY
    agent = _start_on(disk, fleet, disk_agents, device, extra)
    v1, v2 = releases["v1"], releases["v2"]
    fleet.deploy("clf", v1, device)
    agent.wait_for_version("clf", v1)
    # Requests count once probation has begun, a moment after the version first answers.
    _wait("v1 on probation", lambda: _model_status(agent, "clf").get("phase") == "probation")
    for _ in range(3):
        agent.infer("clf", models.rows[:1])
    _wait("v1 committed", lambda: _settled(agent, "clf", v1))
    with fleet.registry_client() as watcher:
        watcher.subscribe(TOPICS.events(device))
        fleet.deploy("clf", v2, device)
        _wait("v2 on probation", lambda: _model_status(agent, "clf").get("phase") == "probation")
        _wait("the spool sent", lambda: _spool_drained(agent))
        disk.fill()
        for _ in range(3):  # probation ends: v2 passed, and its commit cannot be written
            assert agent.infer("clf", models.rows[:1])[0] == 200
        failure = _failed_event(watcher, device, v2)
    assert failure["reason"] == "disk_full"
    status = _model_status(agent, "clf")
    assert status["phase"] != "probation"
    assert status["active"]["version"] == v2, "v2 passed probation: it keeps serving"
    assert agent.serving_version("clf") == v2
    seen = _wait(
        "the registry to store the failure",
        lambda: (_registry_device(fleet, device).get("last_error") or {}).get("reason"),
    )
    assert seen == "disk_full"

    disk.free()
    _wait("the commit to land", lambda: _settled(agent, "clf", v2))
    on_disk = agent.get_state()["models"]["clf"]
    assert (on_disk["active"]["version"], on_disk["in_probation"]) == (v2, False)
    assert agent.starts == 1, "never restarted"
    assert agent.process is not None
    assert agent.process.poll() is None
    assert _retained_state(fleet, device)["models"]["clf"]["phase"] == "idle"


def test_an_assignment_on_a_full_disk_is_reported_and_applied_once_space_is_back(
    disk: SmallDisk,
    fleet: Fleet,
    models: Models,
    releases: dict[str, int],
    disk_agents: list[AgentProcess],
) -> None:
    device = "full-assignment"
    agent = _start_on(disk, fleet, disk_agents, device, PROBATION_BY_REQUESTS + FAST_RETRY)
    v1, v2, v3 = releases["v1"], releases["v2"], releases["v3"]
    fleet.deploy("clf", v1, device)
    agent.wait_for_version("clf", v1)
    # Requests count once probation has begun, a moment after the version first answers.
    _wait("v1 on probation", lambda: _model_status(agent, "clf").get("phase") == "probation")
    for _ in range(3):
        agent.infer("clf", models.rows[:1])
    _wait("v1 committed", lambda: _settled(agent, "clf", v1))
    _wait("the spool sent", lambda: _spool_drained(agent))
    disk.fill()
    with fleet.registry_client() as watcher:
        watcher.subscribe(TOPICS.events(device))
        fleet.deploy("clf", v2, device)
        assert _failed_event(watcher, device, v2)["reason"] == "disk_full"
        state = _retained_state(fleet, device)
        assert state["online"] is True, "still connected: no clean disconnect, no will"
        fleet.deploy("clf", v3, device)  # the next assignment still arrives
        assert _failed_event(watcher, device, v3)["reason"] == "disk_full"
    assert agent.serving_version("clf") == v1, "the old model keeps serving"
    view = _registry_device(fleet, device)
    assert (view["online"], view["connection"]) == (True, "online")

    disk.free()
    agent.wait_for_version("clf", v3)
    # Requests count once probation has begun, a moment after the version first answers.
    _wait("v3 on probation", lambda: _model_status(agent, "clf").get("phase") == "probation")
    for _ in range(3):
        agent.infer("clf", models.rows[:1])
    _wait("v3 committed", lambda: _settled(agent, "clf", v3))
    assert agent.get_state()["assignment_seq"] == _registry_device(fleet, device)["assignment_seq"]
    assert agent.starts == 1, "never restarted"
    assert agent.process is not None
    assert agent.process.poll() is None
