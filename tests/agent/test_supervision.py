"""A device is never deaf to updates: it either keeps listening, or dies loudly and restarts.

Two real `edge-agent run` processes, attacked from outside:

* `state.json` turns into a directory while the agent runs, so the save of the next assignment
  fails. That is a refused write (docs/agent.md, "When the disk refuses a write"), which the
  agent handles: it stays up and connected, reports `failed` `store_error`, and applies the
  assignment once the write lands, without a restart.
* The broker follower dies: the device's copy of the broker's CA becomes unusable (a rotation
  cut short leaves it empty), then the broker restarts. Every connection builds its TLS context
  from the files, so the reconnection meets a `ConfigError`, which the reconnect loop does not
  take for a lost connection: the `mqtt` task ends. A real fault of the machine, not one made
  for the test (the state.json trigger used before is now a handled refused write, and so is
  anything a broker message causes). The agent must log which task died (once, with its
  traceback), stop feeding the systemd watchdog, exit 1, and report the failure upstream (from
  the spool, after a restart); a restart with the CA still unusable is refused, naming the file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from edge_protocol import AssignedModel, Assignment, Envelope, Topics, utc_now
from tests.support.agent import AgentProcess
from tests.support.broker import (
    LOCALHOST,
    Broker,
    BrokerFactory,
    MqttTestClient,
    RetainedMessages,
    free_port,
)
from tests.support.provisioning import TrustRoot, write_root
from tests.support.systemd_notify import NotifyListener

BIN = Path(sys.executable).parent
TOPICS = Topics()
DEVICE = "deaf-device"  # on the shared plain broker: a name no other test uses
TLS_DEVICE = "dev-a"  # a user of the TLS broker, whose ACL confines it to its own topics
WAIT_S = 60.0  # a liveness bound for what the agent does next, not a timing assertion


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[NotifyListener]:
    """The service manager's notify socket."""
    notify = NotifyListener(str(tmp_path / "notify"))
    yield notify
    notify.close()


def device(tmp_path: Path, device_id: str, mqtt: str, extra: str = "") -> tuple[Path, TrustRoot]:
    """A device.toml with `mqtt` as its [mqtt] table, and the root it was provisioned with."""
    trust = write_root(tmp_path / "root.json")
    config = tmp_path / "device.toml"
    config.write_text(
        f'device_id = "{device_id}"\n[trust]\nroot_file = "root.json"\n'
        f"[mqtt]\n{mqtt}reconnect_min_s = 0.1\nreconnect_max_s = 1.0\n{extra}"
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


def wait_online(client: MqttTestClient, device_id: str) -> None:
    """Wait for the device's retained online state (it is connected and subscribed)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        message = client.next_message(timeout=deadline - time.monotonic())
        if message.topic == TOPICS.state(device_id) and json.loads(message.payload).get("online"):
            return
    raise AssertionError("the agent never reported itself online")


def messages_until(
    client: MqttTestClient, device_id: str, wanted: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(events, states) the device sent, up to the first event that has every field of `wanted`."""
    events: list[dict[str, Any]] = []
    states: list[dict[str, Any]] = []
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        message = client.next_message(timeout=deadline - time.monotonic())
        if message.topic == TOPICS.state(device_id):
            states.append(json.loads(message.payload))
        elif message.topic == TOPICS.events(device_id):
            events.append(json.loads(message.payload))
            if all(events[-1].get(k) == v for k, v in wanted.items()):
                return events, states
    raise AssertionError(f"no event like {wanted}; saw {events}")


def retained_state(broker: Broker, device_id: str) -> dict[str, Any]:
    """The device's retained state as a newcomer to the broker reads it."""
    with broker.connect(broker.admin_user) as reader:
        reader.subscribe(TOPICS.state(device_id))
        message = reader.next_message(timeout=WAIT_S)
    assert message.topic == TOPICS.state(device_id)
    parsed: dict[str, Any] = json.loads(message.payload)
    return parsed


def saved_seq(state_file: Path) -> int | None:
    """The assignment seq `state.json` holds, or None while it is not a readable file."""
    try:
        seq: int = json.loads(state_file.read_text())["assignment_seq"]
    except (OSError, ValueError, KeyError):
        return None
    return seq


def test_a_state_json_that_cannot_be_written_leaves_the_device_listening(
    tmp_path: Path, mosquitto_plain: Broker, retained: RetainedMessages
) -> None:
    updates = "[updates]\nwrite_retry_min_s = 0.1\nwrite_retry_max_s = 0.5\n"
    config, trust = device(tmp_path, DEVICE, f'url = "{mosquitto_plain.url}"\n', updates)
    state_dir = tmp_path / "state"
    state_file = state_dir / "state.json"
    agent = AgentProcess(config, state_dir)
    with mosquitto_plain.connect() as watcher:
        watcher.subscribe(f"{TOPICS.prefix}/devices/{DEVICE}/#")
        agent.start()
        try:
            wait_online(watcher, DEVICE)
            # Every save of state.json fails: os.replace cannot put a file over a directory.
            state_file.mkdir()
            retained.publish(mosquitto_plain, TOPICS.assignment(DEVICE), assignment(trust, 1))
            wanted = {"event": "failed", "model": "clf", "reason": "store_error", "seq": 1}
            events, states = messages_until(watcher, DEVICE, wanted)

            # Still serving, still connected: the broker never sent its will.
            assert agent.process is not None
            assert agent.process.poll() is None
            assert agent.get("/v2/health/live", expect_json=False) is not None
            assert all(state["online"] for state in states), states
            assert retained_state(mosquitto_plain, DEVICE)["online"] is True
            assert "cannot be recorded" in events[-1]["detail"]
            assert not any(e.get("event") == "received" for e in events), events

            # The disk takes the write again: it lands, and the waiting assignment is applied.
            state_file.rmdir()
            messages_until(watcher, DEVICE, {"event": "received", "model": "clf", "seq": 1})
            assert saved_seq(state_file) == 1
            assert agent.process.poll() is None  # the same process throughout
            assert agent.get("/v2/health/live", expect_json=False) is not None
        finally:
            agent.stop()

    assert agent.process.returncode == 0
    log = agent.log_file.read_text()
    assert "CRITICAL" not in log, log
    assert "reconnecting" not in log, log  # one connection throughout


def test_a_dead_broker_follower_ends_the_agent_and_is_reported(
    tmp_path: Path, broker_factory: BrokerFactory, manager: NotifyListener
) -> None:
    broker = broker_factory.tls()
    assert broker.ca_file is not None
    ca_file = shutil.copy(broker.ca_file, tmp_path / "ca.crt")  # the device's own copy
    (tmp_path / "password").write_text(broker.password(TLS_DEVICE))
    mqtt = (
        f'url = "{broker.url}"\nusername = "{TLS_DEVICE}"\n'
        f'password_file = "password"\nca_file = "ca.crt"\n'
    )
    config, _trust = device(tmp_path, TLS_DEVICE, mqtt)
    state_dir = tmp_path / "state"
    argv = [str(BIN / "edge-agent"), "run", "--config", str(config), "--state-dir", str(state_dir)]
    argv += ["--listen", f"{LOCALHOST}:{free_port()}"]
    env = {**os.environ, "NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    log = tmp_path / "agent.log"
    with broker.connect(broker.admin_user) as watcher:
        watcher.subscribe(f"{TOPICS.prefix}/devices/{TLS_DEVICE}/#")
        with log.open("w") as output:
            agent = subprocess.Popen(argv, env=env, stdout=output, stderr=subprocess.STDOUT)
        try:
            wait_online(watcher, TLS_DEVICE)
            Path(ca_file).write_bytes(b"")  # a CA rotation cut short
            broker.restart()  # the connection drops; the next one needs the CA
            code = agent.wait(timeout=120)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    text = log.read_text()

    assert code == 1, text
    lines = text.splitlines()
    died = [line for line in lines if "CRITICAL" in line]
    assert len(died) == 1, text
    assert "task 'mqtt' died: ConfigError: cannot load the TLS files of [mqtt]" in died[0]
    assert "Traceback (most recent call last)" in died[0]  # folded onto its line
    assert not any("Traceback" in line for line in lines if line not in died), text
    # systemd: pings while healthy, none once the task died; the status says why.
    messages = _notifications(manager)
    failed = next(i for i, m in enumerate(messages) if m.get("STATUS", "").startswith("failed"))
    assert "task 'mqtt' died" in messages[failed]["STATUS"]
    assert {"WATCHDOG": "1"} in messages[:failed]
    assert {"WATCHDOG": "1"} not in messages[failed:]

    # systemd restarts it; with the CA still unusable the start is refused, naming the file.
    refused = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == 1, refused.stderr
    assert "mqtt.ca_file" in refused.stderr

    # Restarted with the CA back, it serves again and the report goes out.
    shutil.copy(broker.ca_file, ca_file)
    with broker.connect(broker.admin_user) as watcher:
        watcher.subscribe(f"{TOPICS.prefix}/devices/{TLS_DEVICE}/events")
        restarted = AgentProcess(config, state_dir)
        restarted.start()
        try:
            wanted = {"event": "failed", "reason": "internal_error"}
            events, _states = messages_until(watcher, TLS_DEVICE, wanted)
        finally:
            restarted.stop()

    assert "task 'mqtt' died: ConfigError: cannot load the TLS files" in events[-1]["detail"]
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
