"""edge_common.processes on real child processes: free ports, waiting for a listener, stopping."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from typing import Any

import pytest

from edge_common.processes import (
    LOCALHOST,
    NotListeningError,
    accepts_connections,
    free_port,
    stop,
    wait_until_listening,
)

LIVENESS_S = 30.0  # a bound on waiting for a child, not a timing assertion


def _python(code: str, **options: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], **options)


def test_a_free_port_can_be_bound_and_nobody_listens_there() -> None:
    port = free_port()
    assert not accepts_connections(LOCALHOST, port)
    with socket.socket() as server:
        server.bind((LOCALHOST, port))
        server.listen()
        assert accepts_connections(LOCALHOST, port)


def test_waiting_returns_once_the_child_listens_and_stop_ends_it() -> None:
    port = free_port()
    child = _python(
        "import http.server, sys; "
        f"http.server.HTTPServer(({LOCALHOST!r}, {port}), http.server.BaseHTTPRequestHandler)"
        ".serve_forever()",
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_listening(LOCALHOST, port, LIVENESS_S, child)
        assert accepts_connections(LOCALHOST, port)
    finally:
        stop(child)
    assert child.returncode == -signal.SIGTERM


def test_a_child_that_exits_first_is_named_with_its_exit_code() -> None:
    child = _python("import sys; sys.exit(3)")
    with pytest.raises(NotListeningError, match="exited early with code 3") as raised:
        wait_until_listening(LOCALHOST, free_port(), LIVENESS_S, child, lambda what: f"x {what}")
    assert str(raised.value).startswith("x ")


def test_stop_kills_a_child_that_ignores_sigterm() -> None:
    code = (
        "import signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(600)"
    )
    child = _python(code, stdout=subprocess.PIPE)
    assert child.stdout is not None
    assert child.stdout.readline() == b"ready\n"  # SIGTERM is ignored from here on
    stop(child, timeout=0.5)
    assert child.returncode == -signal.SIGKILL
    child.stdout.close()


def test_stop_of_nothing_or_of_an_ended_child_does_nothing() -> None:
    stop(None)
    child = _python("pass")
    child.wait(LIVENESS_S)
    stop(child)
    assert child.returncode == 0
