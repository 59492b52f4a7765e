"""A release-key rotation on a live fleet: stop serve, rotate, start serve, devices follow.

One agent stays connected through the rotation; another is offline during it and catches up
from the retained root topics when it comes back. Neither may reject anything: the registry
publishes root v2 before the documents it re-signed with the new key.
"""

from __future__ import annotations

import json
import queue
import time
from typing import Any

from edge_protocol import Envelope
from model_registry.trust.key_files import load_private_key
from tests.e2e.conftest import Models, start_agent
from tests.support.agent import AgentProcess
from tests.support.fleet import TOPICS, Fleet
from tests.support.registry import cli


def _root_version(agent: AgentProcess) -> int | None:
    status = agent.get("/v1/status")
    return None if status is None else int(status["trust"]["root_version"])


def _wait_for_root(agent: AgentProcess, version: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _root_version(agent) == version:
            return
        time.sleep(0.1)
    raise AssertionError(
        f"agent trusts root v{_root_version(agent)}, not v{version}:\n"
        f"{agent.log_file.read_text()[-4000:]}"
    )


def _events(messages: queue.Queue[Any]) -> list[dict[str, Any]]:
    events = []
    while True:
        try:
            message = messages.get_nowait()
        except queue.Empty:
            return events
        if message.topic.endswith("/events"):
            events.append(json.loads(message.payload))


def test_agents_follow_a_release_key_rotation(
    fleet: Fleet, models: Models, agents: list[AgentProcess]
) -> None:
    v1 = fleet.push(models.v1, "clf")["version"]
    online = start_agent(fleet, agents, "rot-online", "rot")
    offline = start_agent(fleet, agents, "rot-offline", "rot")
    fleet.deploy("clf", v1, "rot")
    online.wait_for_version("clf", v1)
    offline.wait_for_version("clf", v1)
    assert _root_version(online) == 1
    old_key = load_private_key(fleet.home / "keys" / "release.pem")

    with fleet.registry_client() as watcher:
        for device in ("rot-online", "rot-offline"):
            watcher.subscribe(TOPICS.events(device))
        offline.stop()
        fleet.registry.stop()
        result = cli("keys", "rotate-release", "--home", str(fleet.home))
        assert "Signed root v2" in result.stdout
        fleet.registry.start()

        # The connected agent follows root v2 and keeps serving what it has.
        _wait_for_root(online, 2)
        assert online.serving_version("clf") == v1
        new_key = load_private_key(fleet.home / "keys" / "release.pem")
        assert new_key.keyid != old_key.keyid

        # A deployment signed by the new key installs on it.
        v2 = fleet.push(models.v2, "clf")["version"]
        fleet.deploy("clf", v2, "rot")
        online.wait_for_version("clf", v2)

        # The agent that was away catches up: root v2 from the retained topics, then v2.
        offline.start()
        offline.wait_for_version("clf", v2)
        assert _root_version(offline) == 2

        with fleet.registry_client() as reader:
            reader.subscribe(TOPICS.assignment("rot-online"))
            assignment = Envelope.from_bytes(reader.next_message().payload)
        assert {s.keyid for s in assignment.signatures} == {new_key.keyid}
        time.sleep(0.5)  # events the agents sent while the last ones were checked
        events = _events(watcher.messages)
    assert {e["device_id"] for e in events if e["event"] == "activated"} == {
        "rot-online",
        "rot-offline",
    }
    assert [e for e in events if e["event"] == "rejected"] == []
