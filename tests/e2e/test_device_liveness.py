"""The registry shows a device online only while it hears from it.

A device whose process is frozen keeps its TCP connection open, so the broker sends no will
until the keep-alive runs out; its retained state still says online. The registry must show it
`stale` once it has missed a few telemetry intervals, `online` again when it speaks, and
`offline` when the broker's will arrives.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.agent import AgentProcess
from tests.support.fleet import Fleet
from tests.support.registry import cli_json

# One report a second; a keep-alive long enough that the will cannot be what the test sees.
CHATTY = "[telemetry]\ninterval_s = 1\n"


def _device_view(fleet: Fleet, device: str) -> dict[str, Any]:
    token = (fleet.home / "secrets" / "cli-token").read_text().strip()
    request = urllib.request.Request(  # noqa: S310 - the test registry's http URL
        f"{fleet.registry.url}/v1/devices/{device}",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        view: dict[str, Any] = json.loads(response.read())
        return view


def _wait_connection(fleet: Fleet, device: str, connection: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        view = _device_view(fleet, device)
        if view.get("connection") == connection:
            return
        time.sleep(0.1)
    raise AssertionError(f"{device} never {connection}: {view}")


def _listed(fleet: Fleet, device: str) -> dict[str, Any]:
    listing = cli_json("devices", "list", "--group", device, *fleet.api())
    (row,) = [d for d in listing["devices"] if d["device_id"] == device]
    return dict(row)


@pytest.fixture
def frozen() -> Iterator[list[AgentProcess]]:
    """Agents the test stopped with SIGSTOP: let them run again before they are killed."""
    stopped: list[AgentProcess] = []
    yield stopped
    for agent in stopped:
        if agent.process is not None and agent.process.poll() is None:
            agent.process.send_signal(signal.SIGCONT)


def test_a_device_the_registry_cannot_hear_from_is_stale_not_online(
    fleet: Fleet, agents: list[AgentProcess], frozen: list[AgentProcess]
) -> None:
    device = "frozen"
    agent = fleet.agent(device, device, CHATTY)
    text = agent.config.read_text()
    assert "keepalive_s = 30\n" in text
    agent.config.write_text(text.replace("keepalive_s = 30\n", "keepalive_s = 300\n"))
    agents.append(agent)
    agent.start()
    _wait_connection(fleet, device, "online")
    assert agent.process is not None
    agent.process.send_signal(signal.SIGSTOP)
    frozen.append(agent)
    _wait_connection(fleet, device, "stale")
    view = _device_view(fleet, device)
    assert view["online"] is False, "a device nobody hears from is not shown online"
    assert view["state"]["online"] is True, "its last state still claims it"
    listed = _listed(fleet, device)
    assert (listed["online"], listed["connection"]) == (False, "stale")

    agent.process.send_signal(signal.SIGCONT)
    _wait_connection(fleet, device, "online")
    assert _listed(fleet, device)["online"] is True

    agent.kill()  # the will: offline, as before
    _wait_connection(fleet, device, "offline")
