"""A broker that crashes and comes back without its state costs no event and no telemetry.

mosquitto is killed with SIGKILL, so nothing it held for the registry survives (its saved state
is deleted too, as a crash during the save would leave it). The agent spools while the broker
is away, reconnects to the empty broker and sends everything there while the registry is not
yet back: the broker acknowledges messages nobody receives. The registry then returns, and
every message the agent spooled or sent in the meantime must be stored, each exactly once.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections import Counter
from typing import Any

from tests.support.agent import AgentProcess
from tests.support.fleet import TOPICS, Fleet

DEVICE = "crashy"
# A report a second, a short wait for acks and quick reconnections, so the test moves fast.
SETTINGS = "[telemetry]\ninterval_s = 1.0\nack_timeout_s = 2.0\n"
RECONNECT = ("keepalive_s = 30", "keepalive_s = 30\nreconnect_min_s = 0.1\nreconnect_max_s = 0.5")


def _device_view(fleet: Fleet) -> dict[str, Any]:
    token = (fleet.home / "secrets" / "cli-token").read_text().strip()
    request = urllib.request.Request(  # noqa: S310 - the test registry's http URL
        f"{fleet.registry.url}/v1/devices/{DEVICE}?events=1000&telemetry=1000",
        headers={"Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        view: dict[str, Any] = json.loads(response.read())
        return view


def _stored_seqs(fleet: Fleet) -> Counter[int]:
    """How often each msg_seq of the device is stored, events and telemetry together."""
    view = _device_view(fleet)
    bodies = [m["body"] for m in (*view["events"], *view["telemetry"])]
    return Counter(body["msg_seq"] for body in bodies if "msg_seq" in body)


def _spooled_seqs(agent: AgentProcess) -> set[int]:
    """The msg_seq of every message file in the agent's spool."""
    names = (p.name for p in (agent.state_dir / "spool").iterdir())
    return {int(name.split(".")[0]) for name in names if name.endswith((".events", ".telemetry"))}


def _wait_for(predicate: Any, what: str, timeout: float = 60) -> None:
    """Poll until `predicate` holds (a liveness bound, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _crash_broker(fleet: Fleet) -> None:
    fleet.broker.kill()
    for saved in (fleet.root / "broker" / "data").glob("mosquitto.db*"):
        saved.unlink()


def test_messages_spooled_through_a_broker_crash_are_stored_once(
    fleet: Fleet, agents: list[AgentProcess]
) -> None:
    agent = fleet.agent(DEVICE, DEVICE, SETTINGS)
    agent.config.write_text(agent.config.read_text().replace(*RECONNECT))
    agents.append(agent)
    agent.start()

    def spool() -> dict[str, Any]:
        status: dict[str, Any] = agent.get("/v1/status")["telemetry"]
        return status

    # The registry stores the first reports and says so: the agent's spool empties.
    _wait_for(lambda: len(_stored_seqs(fleet)) >= 2 and spool()["spool"]["pending"] == 0,
              "the first reports to be stored and forgotten")  # fmt: skip

    # --- the registry goes away, then the broker crashes: what it queued is gone --------
    fleet.registry.stop()
    sent = spool()["sent"]
    _wait_for(lambda: spool()["sent"] > sent, "a report queued by the broker for the registry")
    _crash_broker(fleet)
    _wait_for(lambda: len(_spooled_seqs(agent)) >= 5, "reports spooled while the broker is down")

    # --- the broker is back, empty; the agent drains into it before the registry is back --
    agent.process.send_signal(signal.SIGSTOP)  # held until the watcher below is listening
    spooled = _spooled_seqs(agent)
    fleet.broker.start()
    delivered: set[int] = set()
    rejected: int | None = None
    with fleet.registry_client() as watcher:  # not the registry: its own session, its own queue
        watcher.subscribe(TOPICS.telemetry(DEVICE))
        watcher.subscribe(TOPICS.events(DEVICE))
        agent.process.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 60
        while rejected is None or not spooled <= delivered:
            assert time.monotonic() < deadline, f"never sent: {sorted(spooled - delivered)}"
            body = json.loads(watcher.next_message(timeout=60).payload)
            if not delivered:  # connected and subscribed: a bad assignment makes an event
                watcher.publish(TOPICS.assignment(DEVICE), b"not an assignment")
            delivered.add(body["msg_seq"])
            if body.get("event") == "rejected":
                rejected = body["msg_seq"]
    assert spool()["spool"]["pending"] > 0, "the broker's PUBACK did not make the agent forget"

    # --- the registry returns: everything the broker swallowed is resent and stored once --
    fleet.registry.start()
    expected = spooled | delivered
    _wait_for(lambda: expected <= set(_stored_seqs(fleet)), "every message to be stored", 120)
    stored = _stored_seqs(fleet)
    assert {seq: stored[seq] for seq in expected} == dict.fromkeys(expected, 1)
    assert rejected in stored
    _wait_for(lambda: spool()["spool"]["pending"] == 0, "the agent to forget what was stored")
    assert spool()["spool"]["dropped_telemetry"] == 0
