"""mosquitto itself: finding its binaries, and one broker process started, stopped and restarted."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

from edge_common import processes
from edge_common.processes import NotListeningError, accepts_connections, wait_until_listening

# Generous on purpose: CI machines are small and busy; happy paths finish in milliseconds.
DEFAULT_TIMEOUT = 10.0
INSTALL_HINT = "apt-get install -y mosquitto"


class MosquittoNotFoundError(RuntimeError):
    """The mosquitto binaries are not installed."""


class BrokerStartError(RuntimeError):
    """mosquitto exited or did not accept connections in time."""


def find_mosquitto() -> Path:
    """Return the mosquitto broker binary, searching PATH and then /usr/sbin."""
    # /usr/sbin is often missing from PATH for non-root users, where Debian installs it.
    return _find_binary("mosquitto", ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"))


def find_mosquitto_passwd() -> Path:
    """Return the mosquitto_passwd binary that ships with the broker."""
    return _find_binary("mosquitto_passwd", ("/usr/bin/mosquitto_passwd",))


def _find_binary(name: str, fallbacks: tuple[str, ...]) -> Path:
    """Locate an executable on PATH or at a well-known fallback path."""
    found = shutil.which(name)
    if found:
        return Path(found)
    for candidate in map(Path, fallbacks):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    raise MosquittoNotFoundError(
        f"`{name}` was not found on PATH or in {', '.join(fallbacks)}; "
        f"the MQTT tests need a real broker: run `{INSTALL_HINT}`"
    )


class MosquittoProcess:
    """One mosquitto process for a config file; can be stopped and restarted on the same port."""

    def __init__(
        self, config_file: Path, *, host: str, port: int, log_file: Path, binary: Path | None = None
    ) -> None:
        self.config_file = config_file
        self.host = host
        self.port = port
        self.log_file = log_file
        self.binary = binary or find_mosquitto()
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Start mosquitto and block until its listener accepts TCP connections."""
        if self.running:
            raise BrokerStartError(f"mosquitto on port {self.port} is already running")
        # Otherwise the readiness poll below could mistake another listener for ours.
        if accepts_connections(self.host, self.port):
            raise BrokerStartError(self._failure("cannot start: the port is already in use"))
        # Append so a restarted broker's log follows the previous run's for post-mortems.
        with self.log_file.open("ab") as log:
            self._proc = subprocess.Popen(
                [str(self.binary), "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            wait_until_listening(self.host, self.port, timeout, self._proc, self._failure)
        except NotListeningError as e:
            self.stop()
            raise BrokerStartError(str(e)) from None

    def stop(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Terminate mosquitto, killing it if it does not exit within `timeout`."""
        proc, self._proc = self._proc, None
        processes.stop(proc, timeout)

    def kill(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """SIGKILL mosquitto: it saves nothing of its state (a crash)."""
        proc, self._proc = self._proc, None
        processes.kill(proc, timeout)

    def restart(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        """Stop and start again on the same port with the same config."""
        self.stop(timeout)
        self.start(timeout)

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its password and ACL files, keeping connections."""
        if self._proc is None or self._proc.poll() is not None:
            raise BrokerStartError("cannot reload: mosquitto is not running")
        self._proc.send_signal(signal.SIGHUP)

    def log_text(self) -> str:
        """Return everything mosquitto has logged so far."""
        if not self.log_file.exists():
            return ""
        return self.log_file.read_text(encoding="utf-8", errors="replace")

    def _failure(self, what: str) -> str:
        """Describe a start failure with the config file and the broker's own log."""
        return (
            f"mosquitto ({self.config_file}, {self.host}:{self.port}) {what}.\n"
            f"--- config ---\n{self.config_file.read_text(encoding='utf-8')}"
            f"--- log ---\n{self.log_text()}"
        )
