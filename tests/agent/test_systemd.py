"""systemd integration: sd_notify over a real datagram socket, the journal log format, the unit.

The end-to-end test runs a real `edge-agent run` with NOTIFY_SOCKET and WATCHDOG_USEC pointing
at a socket the test listens on, exactly as systemd would start it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
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
from tests.support.models import ModelSet
from tests.support.systemd_notify import NotifyListener


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
