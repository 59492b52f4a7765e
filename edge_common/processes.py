"""Child processes on this machine: a free port, waiting until one listens, stopping cleanly.

Neither service starts children; the demo (`scripts/demo.py`), the tests and the benchmarks do,
each around real `model-registry`, `edge-agent`, mosquitto and HAProxy processes. This is the
one package all three can import without path tricks, so the one copy of these helpers lives
here (docs/development.md, "Architecture").
"""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

LOCALHOST = "127.0.0.1"
POLL_S = 0.02


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port nobody listens on at `host` right now (the kernel's pick, never 1883)."""
    # The race until the child binds it is small; its start failure then says so.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def accepts_connections(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to host:port succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


class NotListeningError(RuntimeError):
    """The process exited, or did not listen within the time given."""


def wait_until_listening(
    host: str,
    port: int,
    timeout: float,
    process: subprocess.Popen[Any] | None = None,
    describe: Callable[[str], str] = str,
) -> None:
    """Poll until host:port accepts a connection; NotListeningError if `process` dies first.

    `describe` turns what went wrong into the error's text (a caller adds its config and log).
    """
    deadline = time.monotonic() + timeout
    while True:
        if process is not None and process.poll() is not None:
            raise NotListeningError(describe(f"exited early with code {process.returncode}"))
        if accepts_connections(host, port):
            return
        if time.monotonic() > deadline:
            raise NotListeningError(describe(f"did not listen on {port} within {timeout:.0f}s"))
        time.sleep(POLL_S)


def stop(process: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    """SIGTERM, and SIGKILL if the process has not exited `timeout` seconds later."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout)


def kill(process: subprocess.Popen[Any] | None, timeout: float = 10.0) -> None:
    """SIGKILL (a crash: the process saves nothing) and reap it."""
    if process is None or process.poll() is not None:
        return
    process.kill()
    process.wait(timeout)
