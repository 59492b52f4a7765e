"""A background task that dies takes the agent down loudly, so that systemd restarts it.

The trigger is real: the state directory's `state.json` turns into a directory while the agent
runs, so the save that follows the next assignment raises an OSError inside the broker
follower. The agent must log which task died (with its traceback, once), stop feeding the
systemd watchdog, exit 1, and report the failure upstream (from the spool, after a restart).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_protocol import AssignedModel, Assignment, Envelope, Topics, utc_now
from tests.agent.test_systemd import NotifyListener
from tests.support.agent import AgentProcess
from tests.support.broker import LOCALHOST, Broker, MqttTestClient, RetainedMessages, free_port
from tests.support.provisioning import TrustRoot, write_root

BIN = Path(sys.executable).parent
TOPICS = Topics()
DEVICE = "deaf-device"


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[NotifyListener]:
    """The service manager's notify socket."""
    notify = NotifyListener(str(tmp_path / "notify"))
    yield notify
    notify.close()


def device(tmp_path: Path, broker: Broker) -> tuple[Path, TrustRoot]:
    """A device.toml for `broker` and the trust root it was provisioned with."""
    trust = write_root(tmp_path / "root.json")
    config = tmp_path / "device.toml"
    config.write_text(
        f'device_id = "{DEVICE}"\n'
        f'[trust]\nroot_file = "root.json"\n'
        f'[mqtt]\nurl = "{broker.url}"\nreconnect_max_s = 1.0\n'
    )
    return config, trust


def assignment(trust: TrustRoot, seq: int) -> bytes:
    """An assignment the device accepts: signed by its root's release key, valid now."""
    now = utc_now().replace(microsecond=0)
    document = Assignment(
        device_id=DEVICE,
        seq=seq,
        created=now,
        expires=now + timedelta(days=1),
        models={"clf": AssignedModel(1, "ab" * 32, 1234)},
    )
    return Envelope(signed=document.to_dict()).sign(trust.release_keys[0]).to_bytes()


def wait_online(client: MqttTestClient) -> None:
    """Wait for the device's retained online state (it is connected and subscribed)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        message = client.next_message(timeout=deadline - time.monotonic())
        if message.topic == TOPICS.state(DEVICE) and json.loads(message.payload).get("online"):
            return
    raise AssertionError("the agent never reported itself online")


def events_until(client: MqttTestClient, wanted: dict[str, Any]) -> list[dict[str, Any]]:
    """The device's events, up to the first that has every field of `wanted`."""
    seen = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        message = client.next_message(timeout=deadline - time.monotonic())
        if message.topic != TOPICS.events(DEVICE):
            continue
        event = json.loads(message.payload)
        seen.append(event)
        if all(event.get(k) == v for k, v in wanted.items()):
            return seen
    raise AssertionError(f"no event like {wanted}; saw {seen}")


def test_a_dead_broker_follower_ends_the_agent_and_is_reported(
    tmp_path: Path,
    mosquitto_plain: Broker,
    retained: RetainedMessages,
    manager: NotifyListener,
) -> None:
    config, trust = device(tmp_path, mosquitto_plain)
    state_dir = tmp_path / "state"
    port = free_port()
    argv = [str(BIN / "edge-agent"), "run", "--config", str(config), "--state-dir", str(state_dir)]
    argv += ["--listen", f"{LOCALHOST}:{port}"]
    env = {**os.environ, "NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    log = tmp_path / "agent.log"
    with mosquitto_plain.connect() as watcher:
        watcher.subscribe(f"{TOPICS.prefix}/devices/{DEVICE}/#")
        with log.open("w") as output:
            agent = subprocess.Popen(argv, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_online(watcher)
            # The next save of state.json fails: os.replace cannot put a file over a directory.
            (state_dir / "state.json").mkdir()
            retained.publish(mosquitto_plain, TOPICS.assignment(DEVICE), assignment(trust, 1))
            code = agent.wait(timeout=120)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
        text = log.read_text()

        assert code == 1, text
        died = [line for line in text.splitlines() if "CRITICAL" in line]
        assert len(died) == 1, text
        assert "task 'mqtt' died: IsADirectoryError" in died[0]
        assert "Traceback (most recent call last)" in died[0]  # folded onto its line
        assert text.count("Traceback") == 1, text
        # systemd: pings while healthy, none once the task died; the status says why.
        messages = _notifications(manager)
        failed = next(i for i, m in enumerate(messages) if m.get("STATUS", "").startswith("failed"))
        assert "task 'mqtt' died" in messages[failed]["STATUS"]
        assert {"WATCHDOG": "1"} in messages[:failed]
        assert {"WATCHDOG": "1"} not in messages[failed:]

        # Restarted with a usable state directory, it serves again and the report goes out.
        (state_dir / "state.json").rmdir()
        restarted = AgentProcess(config, state_dir)
        restarted.start()
        try:
            events = events_until(watcher, {"event": "failed", "reason": "internal_error"})
        finally:
            restarted.stop()

    assert "task 'mqtt' died: IsADirectoryError" in events[-1]["detail"]
    assert "model" not in events[-1]
    assert restarted.process is not None
    assert restarted.process.returncode == 0


def _notifications(manager: NotifyListener) -> list[dict[str, str]]:
    """Every sd_notify message the agent sent, in order (it has exited: all are queued)."""
    manager.sock.setblocking(False)
    messages = list(manager.received)
    while True:
        try:
            data = manager.sock.recv(4096)
        except BlockingIOError:
            return messages
        messages.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
