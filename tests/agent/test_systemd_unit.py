"""deploy/systemd/edge-agent.service: the directives the agent relies on, checked and run."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.support.broker import LOCALHOST, Broker, free_port
from tests.support.registry import cli
from tests.support.systemd_notify import NotifyListener

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "edge-agent.service"
BIN = Path(sys.executable).parent


# --- the unit file ------------------------------------------------------------------------


def _directives() -> dict[str, dict[str, list[str]]]:
    """section -> key -> every value given (LoadCredential= is repeated), in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = sections.setdefault("", {})
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _section(name: str) -> dict[str, str]:
    """The last value of every key of a section."""
    return {key: values[-1] for key, values in _directives()[name].items()}


def test_the_unit_has_the_directives_the_agent_relies_on() -> None:
    service = _section("Service")
    required = {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "DynamicUser": "yes",
        "StateDirectory": "edge-agent",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "NoNewPrivileges": "yes",
        "PrivateTmp": "yes",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    }

    assert {key: service.get(key) for key in required} == required
    assert int(service["WatchdogSec"]) > 0
    assert re.fullmatch(r"\d+[KMG]", service["MemoryMax"])
    argv = service["ExecStart"].split()
    assert argv[1:3] == ["run", "--config"]
    assert argv[argv.index("--state-dir") + 1] == "/var/lib/edge-agent"
    # The config is the one in /etc/edge-agent, handed over as a credential (see the unit).
    assert argv[3] == "%d/device.toml"
    credentials = _directives()["Service"]["LoadCredential"]
    assert "device.toml:/etc/edge-agent/device.toml" in credentials
    assert "mqtt-password:/etc/edge-agent/mqtt-password" in credentials
    assert _section("Install")["WantedBy"] == "multi-user.target"


def test_the_agent_starts_in_an_empty_directory_of_its_own() -> None:
    service = _section("Service")

    # Not / (systemd's default): relative file names would reach the credentials and /etc.
    assert service["WorkingDirectory"] == "/run/edge-agent-cwd"
    assert "edge-agent-cwd" in service["RuntimeDirectory"].split()


def test_the_stop_timeout_covers_the_drain() -> None:
    service = _section("Service")

    # server.shutdown_timeout_s (30 s) plus the offline report (5 s).
    assert int(service["TimeoutStopSec"]) > 35


def _analyzable_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart's /opt/edge-agent path pointing at this venv's edge-agent.

    `systemd-analyze verify` checks that the binary exists; nothing else is changed.
    """
    text = UNIT.read_text().replace("/opt/edge-agent/bin/edge-agent", str(BIN / "edge-agent"))
    path = tmp_path / UNIT.name
    path.write_text(text)
    return path


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "verify", str(_analyzable_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    # verify exits 0 on unknown keys and unparsable values too: it only warns on stderr.
    assert (done.returncode, done.stderr) == (0, "")


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_analyze_security_rates_the_unit_ok(tmp_path: Path) -> None:
    done = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", str(_analyzable_unit(tmp_path))],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if "--offline" in done.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")

    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout)
    assert exposure, done.stdout + done.stderr
    # 0 is a fully locked down service, 10 an unprotected one; systemd calls < 2 "OK".
    assert float(exposure.group(1)) < 2.0, done.stdout


# --- the real agent under a fake service manager ------------------------------------------


def _device(tmp_path: Path, broker: Broker) -> Path:
    """A minimal device.toml whose root comes from the registry's own `init`."""
    home = tmp_path / "registry-home"
    cli("init", "--home", str(home))
    config = tmp_path / "device.toml"
    config.write_text(
        f'device_id = "sd-device"\n'
        f'[trust]\nroot_file = "{home / "root.json"}"\n'
        f'[mqtt]\nurl = "{broker.url}"\nreconnect_max_s = 1.0\n'
    )
    return config


def _live(port: int) -> bool:
    try:
        url = f"http://{LOCALHOST}:{port}/v2/health/live"
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_agent_under_systemd_notifies_ready_watchdog_and_stopping(
    tmp_path: Path, mosquitto_plain: Broker, listener: NotifyListener
) -> None:
    port = free_port()
    argv = [str(BIN / "edge-agent"), "run", "--config", str(_device(tmp_path, mosquitto_plain))]
    argv += ["--listen", f"{LOCALHOST}:{port}", "--state-dir", str(tmp_path / "state")]
    log = tmp_path / "agent.log"
    with log.open("w") as stderr:
        # What systemd sets: the notify socket, a 0.4 s watchdog, stderr connected to journald.
        stat = os.fstat(stderr.fileno())
        env = {
            **os.environ,
            "NOTIFY_SOCKET": listener.address,
            "WATCHDOG_USEC": "400000",
            "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}",
        }
        env.pop("WATCHDOG_PID", None)
        agent = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    try:
        ready = listener.wait_for("READY", timeout=60)
        serving_when_ready = _live(port)
        pings = [listener.wait_for("WATCHDOG") for _ in range(2)]
        agent.send_signal(signal.SIGTERM)
        stopping = listener.wait_for("STOPPING")
        code = agent.wait(timeout=60)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    output = log.read_text()

    assert ready == {"READY": "1", "STATUS": "serving no model"}, output
    assert serving_when_ready
    assert pings == [{"WATCHDOG": "1"}] * 2
    assert stopping["STOPPING"] == "1"
    assert code == 0, output
    # Journal lines: a syslog priority prefix, no timestamp (journald adds its own).
    lines = output.splitlines()
    assert lines
    assert all(re.match(r"<[0-7]>(DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ", x) for x in lines)
    assert "<6>INFO edge_agent.agent: serving on" in output
