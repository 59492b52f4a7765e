"""One agent per state directory: a second `edge-agent run` on it refuses, the first serves on.

Two agents on one directory would take turns knocking each other off the broker (one session
per client id) and both rewrite state.json. The lock is an flock the kernel drops when its
holder dies, so a restart after SIGKILL must start normally.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from edge_protocol import Topics
from tests.support.agent import AgentProcess
from tests.support.broker import LOCALHOST, Broker, MqttTestClient, free_port
from tests.support.provisioning import write_root

BIN = Path(sys.executable).parent
TOPICS = Topics()
DEVICE = "locked-device"


def device_config(tmp_path: Path, broker: Broker) -> Path:
    """A device.toml for `broker`, with a genuine root next to it."""
    write_root(tmp_path / "root.json")
    config = tmp_path / "device.toml"
    config.write_text(
        f'device_id = "{DEVICE}"\n'
        f'[trust]\nroot_file = "root.json"\n'
        f'[mqtt]\nurl = "{broker.url}"\nreconnect_max_s = 1.0\n'
    )
    return config


def run_second(config: Path, state_dir: Path, *command: str) -> subprocess.CompletedProcess[str]:
    """`edge-agent run` (or another command) on the same state directory, on its own port."""
    argv = [str(BIN / "edge-agent"), *command] if command else [str(BIN / "edge-agent"), "run"]
    if not command:
        argv += ["--config", str(config), "--state-dir", str(state_dir)]
        argv += ["--listen", f"{LOCALHOST}:{free_port()}"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def online_states(client: MqttTestClient) -> list[bool]:
    """Every state the device published until now (the probe's barrier message included)."""
    client.publish(TOPICS.state("probe"), b"{}")
    states = []
    for message in client.collect_until(TOPICS.state("probe"), timeout=30):
        if message.topic == TOPICS.state(DEVICE):
            states.append(bool(json.loads(message.payload).get("online")))
    return states


def test_a_second_agent_on_the_same_state_directory_refuses(
    tmp_path: Path, mosquitto_plain: Broker
) -> None:
    config = device_config(tmp_path, mosquitto_plain)
    first = AgentProcess(config, tmp_path / "state")
    first.start()
    try:
        assert first.process is not None
        with mosquitto_plain.connect() as watcher:
            watcher.subscribe(TOPICS.state(DEVICE))
            watcher.subscribe(TOPICS.state("probe"))
            _wait_until_online(watcher)

            second = run_second(config, first.state_dir)
            check = run_second(
                config,
                first.state_dir,
                "check-config",
                str(config),
                "--state-dir",
                str(first.state_dir),
            )

            assert second.returncode == 1, second.stderr
            assert "Traceback" not in second.stderr
            assert second.stderr == (
                f"edge-agent: state directory {first.state_dir} is in use by another edge-agent "
                f"(pid {first.process.pid}); each agent needs a state directory of its own\n"
            )
            # check-config is fine with a running agent, and says it is there.
            assert check.returncode == 0, check.stderr
            assert f"an agent (pid {first.process.pid}) is running" in check.stderr
            # The first agent serves on, and was never knocked off the broker.
            assert first.get("/v2/health/live", expect_json=False) is not None
            assert first.process.poll() is None
            assert False not in online_states(watcher)
    finally:
        first.kill()  # SIGKILL: nothing is released by the agent itself

    restarted = AgentProcess(config, first.state_dir)
    restarted.start()  # the kernel dropped the lock with its holder
    restarted.stop()
    assert restarted.process is not None
    assert restarted.process.returncode == 0


def _wait_until_online(client: MqttTestClient) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        message = client.next_message(timeout=deadline - time.monotonic())
        if message.topic == TOPICS.state(DEVICE) and json.loads(message.payload).get("online"):
            return
    raise AssertionError("the first agent never reported itself online")
