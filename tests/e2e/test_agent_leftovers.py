"""What an agent leaves behind and what it reports: release files of removed models, rejections
the registry must be able to count."""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import timedelta
from typing import Any

from edge_protocol import AssignedModel, utc_now
from tests.e2e.conftest import start_agent
from tests.support.agent import AgentProcess
from tests.support.fleet import TOPICS, Fleet

SHORT_PROBATION = "[updates]\nprobation_s = 1.0\nprobation_requests = 5\n"


def _api(fleet: Fleet, path: str) -> Any:
    token = (fleet.home / "secrets" / "cli-token").read_text().strip()
    request = urllib.request.Request(  # noqa: S310 - the test registry's http URL
        f"{fleet.registry.url}{path}", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


def _wait_for(condition: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _idle(agent: AgentProcess) -> bool:
    status = agent.get("/v1/status") or {}
    return (status.get("updates", {}).get("clf") or {}).get("phase") == "idle"


def test_an_expired_assignment_is_counted_against_its_deployment(
    fleet: Fleet, releases: dict[str, int], agents: list[AgentProcess]
) -> None:
    device = "late"
    agent = fleet.agent(device, device)
    agents.append(agent)
    fleet.deploy("clf", releases["v1"], device)
    deployment = _api(fleet, "/v1/deployments?model=clf")["deployments"][0]
    assert deployment["devices"] == [device]
    # The device was off until its assignment expired (here: a signed copy that already has).
    release = _api(fleet, f"/v1/models/clf/versions/{releases['v1']}")
    pinned = AssignedModel(release["version"], release["sha256"], release["size"])
    seq = _api(fleet, f"/v1/devices/{device}")["assignment_seq"]
    expired = fleet.forger().assignment(
        device, seq, {"clf": pinned}, expires=utc_now().replace(microsecond=0) - timedelta(hours=1)
    )
    with fleet.registry_client() as registry:
        registry.publish(TOPICS.assignment(device), expired, retain=True)
    agent.start()

    def counted() -> bool:
        progress = _api(fleet, f"/v1/deployments/{deployment['id']}")["progress"]
        return bool(progress["devices"][0]["status"] == "failed")

    _wait_for(counted, "the rejection to count against the deployment")
    shown = _api(fleet, f"/v1/deployments/{deployment['id']}")["progress"]["devices"][0]
    assert shown["reason"] == "expired"
    rejected = [
        e["body"] for e in _api(fleet, f"/v1/devices/{device}")["events"]
        if e["body"]["event"] == "rejected"
    ]  # fmt: skip
    assert rejected[0]["model"] == "clf"
    assert rejected[0]["version"] == releases["v1"]


def test_release_files_go_with_their_models(
    fleet: Fleet, releases: dict[str, int], agents: list[AgentProcess]
) -> None:
    agent = start_agent(fleet, agents, "tidy", "tidy", SHORT_PROBATION)
    shas = {}
    for name in ("v1", "v2", "v3"):
        fleet.deploy("clf", releases[name], "tidy")
        agent.wait_for_version("clf", releases[name])
        _wait_for(lambda: _idle(agent), "probation to end")
        shas[name] = _api(fleet, f"/v1/models/clf/versions/{releases[name]}")["sha256"]
    kept = {f"clf-{shas['v2']}.json", f"clf-{shas['v3']}.json"}  # previous and active
    release_dir = agent.state_dir / "releases"
    assert {p.name for p in release_dir.iterdir()} == kept, "v1's model is gone: so is its release"

    agent.stop()
    orphans = [release_dir / f"clf-{'0' * 64}.json", release_dir / f"gone-{shas['v1']}.json"]
    for orphan in orphans:
        orphan.write_bytes(b"{}")
    agent.start()
    assert agent.serving_version("clf") == releases["v3"]
    assert {p.name for p in release_dir.iterdir()} == kept, "orphans are cleared at start"
