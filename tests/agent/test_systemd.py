"""systemd integration: sd_notify over a real datagram socket, the journal log format, the unit.

The end-to-end test runs a real `edge-agent run` with NOTIFY_SOCKET and WATCHDOG_USEC pointing
at a socket the test listens on, exactly as systemd would start it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_agent.runtime import ModelRepository
from edge_agent.systemd import (
    OneLineFormatter,
    SystemdNotifier,
    stream_is_journal,
    syslog_priority,
)
from tests.agent.conftest import load
from tests.support.broker import LOCALHOST, Broker, free_port
from tests.support.models import ModelSet
from tests.support.registry import cli

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "deploy" / "systemd" / "edge-agent.service"
BIN = Path(sys.executable).parent


class NotifyListener:
    """The service manager's end: a bound datagram socket collecting sd_notify messages."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.received: list[dict[str, str]] = []

    def next(self, timeout: float = 10.0) -> dict[str, str]:
        """The next message as KEY -> value; fails the test if none arrives in time."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            raise AssertionError(f"no sd_notify message within {timeout}s") from None
        message = dict(line.split("=", 1) for line in data.decode().splitlines())
        self.received.append(message)
        return message

    def wait_for(self, key: str, timeout: float = 30.0) -> dict[str, str]:
        """Read messages until one sets `key`."""
        deadline = time.monotonic() + timeout
        while True:
            message = self.next(max(0.01, deadline - time.monotonic()))
            if key in message:
                return message

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    """A notify socket on the file system, as systemd uses for services."""
    notify = NotifyListener(str(tmp_path / "notify"))
    yield notify
    notify.close()


def _notifier(address: str, **env: str) -> SystemdNotifier:
    return SystemdNotifier.from_environment({"NOTIFY_SOCKET": address, **env})


# --- the notify protocol ------------------------------------------------------------------


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = SystemdNotifier.from_environment({"WATCHDOG_USEC": "1000000"})

    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    assert not notifier.send("READY=1")
    notifier.ready()
    notifier.stopping()


def test_ready_carries_the_status(listener: NotifyListener) -> None:
    notifier = _notifier(listener.address)

    notifier.ready()

    assert listener.next() == {"READY": "1", "STATUS": "serving no model"}


def test_abstract_socket_names_start_with_an_at_sign() -> None:
    listener = NotifyListener(f"@edge-agent-test-{os.getpid()}-{time.monotonic_ns()}")
    try:
        _notifier(listener.address).stopping()

        assert listener.next()["STOPPING"] == "1"
    finally:
        listener.close()


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "2000000"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4242"}, 1.0),
        ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "4243"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
    ids=["half-of-usec", "pid-is-ours", "pid-is-another", "zero", "not-a-number", "unset"],
)
def test_watchdog_interval(env: dict[str, str], interval: float | None) -> None:
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": "/run/notify", **env}, pid=4242)

    assert notifier.watchdog_interval_s == interval


def test_an_unknown_socket_kind_disables_notifications() -> None:
    assert not _notifier("vsock:2:1234").enabled


async def test_watchdog_pings_come_from_the_event_loop(listener: NotifyListener) -> None:
    notifier = _notifier(listener.address, WATCHDOG_USEC="100000")

    async with notifier.watchdog_pings():
        pings = [await asyncio.to_thread(listener.next) for _ in range(3)]

    assert pings == [{"WATCHDOG": "1"}] * 3


async def test_a_blocked_loop_stops_the_pings(listener: NotifyListener) -> None:
    notifier = _notifier(listener.address, WATCHDOG_USEC="100000")

    async with notifier.watchdog_pings():
        await asyncio.to_thread(listener.next)
        # From here the loop is blocked: drop what was sent before, hang, look again.
        _drain(listener.sock)
        time.sleep(0.5)  # noqa: ASYNC251 - the hung event loop under test
        during_the_hang = _drain(listener.sock)

    assert during_the_hang == []


def _drain(sock: socket.socket) -> list[bytes]:
    """Every datagram waiting on `sock`, without blocking."""
    sock.setblocking(False)
    waiting = []
    while True:
        try:
            waiting.append(sock.recv(4096))
        except BlockingIOError:
            return waiting


def test_status_follows_the_repository(listener: NotifyListener, onnx_models: ModelSet) -> None:
    notifier = _notifier(listener.address)
    repository = ModelRepository()
    repository.add_listener(notifier.model_changed)
    try:
        repository.swap("classifier", load(onnx_models.classifier, version=3))
        first = listener.next()
        repository.swap("regressor", load(onnx_models.regressor, version=1))
        second = listener.next()
        repository.swap("classifier", load(onnx_models.classifier, version=4))
        third = listener.next()
        repository.remove("regressor")
        fourth = listener.next()
    finally:
        repository.close()

    assert [m["STATUS"] for m in (first, second, third, fourth)] == [
        "serving classifier v3",
        "serving classifier v3, regressor v1",
        "serving classifier v4, regressor v1",
        "serving classifier v4",
    ]


def test_no_ready_once_stopping(listener: NotifyListener) -> None:
    notifier = _notifier(listener.address)

    notifier.stopping()
    notifier.ready()
    notifier.send("MARKER=1")

    assert [set(listener.next()), set(listener.next())] == [{"STOPPING", "STATUS"}, {"MARKER"}]


def test_a_vanished_manager_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = _notifier(str(tmp_path / "gone"))

    with caplog.at_level(logging.WARNING, logger="edge_agent.systemd"):
        sent = [notifier.send("WATCHDOG=1") for _ in range(3)]

    assert sent == [False, False, False]
    assert len(caplog.records) == 1


# --- logging for the journal --------------------------------------------------------------


def _record(level: int, message: str, *, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc else None
    return logging.LogRecord("edge_agent.x", level, __file__, 1, message, (), exc_info)


def test_journal_lines_have_a_priority_and_no_timestamp() -> None:
    line = OneLineFormatter(journal=True).format(_record(logging.WARNING, "broker gone"))

    assert line == "<4>WARNING edge_agent.x: broker gone"


def test_plain_lines_have_a_timestamp() -> None:
    line = OneLineFormatter(journal=False).format(_record(logging.INFO, "serving"))

    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO edge_agent.x: serving", line)


@pytest.mark.parametrize("journal", [True, False])
def test_a_traceback_stays_on_the_line_of_its_event(journal: bool) -> None:
    try:
        raise ValueError("bad\nthing")
    except ValueError as e:
        record = _record(logging.ERROR, "request failed", exc=e)

    line = OneLineFormatter(journal=journal).format(record)

    assert "\n" not in line
    assert "request failed | Traceback (most recent call last):" in line
    assert line.endswith("ValueError: bad | thing")


@pytest.mark.parametrize(
    ("level", "priority"),
    [(logging.DEBUG, 7), (logging.INFO, 6), (logging.WARNING, 4), (logging.ERROR, 3), (50, 2)],
)
def test_syslog_priorities(level: int, priority: int) -> None:
    assert syslog_priority(level) == priority


def test_journal_stream_must_name_the_stream(tmp_path: Path) -> None:
    with (tmp_path / "stderr").open("w") as stream, (tmp_path / "other").open("w") as other:
        own, foreign = os.fstat(stream.fileno()), os.fstat(other.fileno())
        matching = {"JOURNAL_STREAM": f"{own.st_dev}:{own.st_ino}"}
        inherited = {"JOURNAL_STREAM": f"{foreign.st_dev}:{foreign.st_ino}"}

        assert stream_is_journal(stream, matching)
        # A child whose stderr was redirected elsewhere inherits the variable: not the journal.
        assert not stream_is_journal(stream, inherited)
        assert not stream_is_journal(stream, {"JOURNAL_STREAM": "garbage"})
        assert not stream_is_journal(stream, {})


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
