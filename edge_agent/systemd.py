"""systemd integration: the notify protocol and a log format for the journal.

The agent speaks sd_notify itself: one datagram per message to the socket named by
$NOTIFY_SOCKET (a path, or an abstract socket spelled with a leading '@'), so a device needs no
libsystemd binding. `READY=1` once the endpoint serves, `WATCHDOG=1` from the event loop at half
of $WATCHDOG_USEC (a hung loop stops the pings and systemd restarts the service), `STATUS=` with
the versions being served, `STOPPING=1` when SIGTERM starts the drain. When a background task
dies, the pings stop at once and `STATUS=` says which task, so that even a drain that hangs ends
in a restart. Without $NOTIFY_SOCKET (not under systemd, or not `Type=notify`) every call is a
no-op.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
import threading
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    # Only for annotations: check-config imports this module and must not load onnxruntime.
    from edge_agent.runtime.model import LoadedModel

log = logging.getLogger(__name__)

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# journald stamps every line itself and reads the syslog priority from a `<N>` prefix.
JOURNAL_FORMAT = "<%(priority)d>%(levelname)s %(name)s: %(message)s"
# (lowest level, syslog priority), highest first: CRITICAL is crit, ERROR err, and so on.
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
_DEBUG_PRIORITY = 7


class SystemdNotifier:
    """Sends sd_notify messages to the service manager; a no-op without an address."""

    def __init__(self, address: str | None, *, watchdog_interval_s: float | None = None) -> None:
        self.address = address
        self.watchdog_interval_s = watchdog_interval_s if address else None
        self._socket: socket.socket | None = None
        self._lock = threading.Lock()
        self._versions: dict[str, int] = {}
        self._failed = False
        self._stopping = False
        self._broken = False  # a task died: no more watchdog pings

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, pid: int | None = None
    ) -> SystemdNotifier:
        """Read $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID (for process `pid`)."""
        env = os.environ if environ is None else environ
        address = _socket_address(env.get("NOTIFY_SOCKET", ""))
        interval = _watchdog_interval(env, os.getpid() if pid is None else pid)
        return cls(address, watchdog_interval_s=interval)

    @property
    def enabled(self) -> bool:
        """Whether a service manager listens."""
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send `KEY=value` lines as one datagram; True if it was sent."""
        if self.address is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            with self._lock:
                if self._socket is None:
                    self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                    self._socket.setblocking(False)
                self._socket.sendto(message, self.address)
        except OSError as e:
            # The service manager is gone or its queue is full: the agent serves on regardless.
            if not self._failed:
                log.warning("cannot notify systemd at %r: %s", self.address, e)
                self._failed = True
            return False
        return True

    def ready(self) -> None:
        """The endpoint serves: tell systemd start-up is over (unless it is already stopping)."""
        if self._stopping:
            return
        self.send("READY=1", f"STATUS={self.status_text()}")

    def stopping(self) -> None:
        """SIGTERM arrived: the graceful drain begins."""
        self._stopping = True
        self.send("STOPPING=1", "STATUS=stopping: draining requests")

    def failed(self, reason: str) -> None:
        """A background task died: stop the watchdog pings, say why; the drain begins."""
        self._broken = self._stopping = True
        self.send("STOPPING=1", "STATUS=failed: " + " ".join(reason.split()))  # one line

    def watchdog(self) -> None:
        """One keep-alive ping (none once a task has died)."""
        if not self._broken:
            self.send("WATCHDOG=1")

    def status_text(self) -> str:
        """What `systemctl status` shows: the version of every model being served."""
        with self._lock:
            versions = sorted(self._versions.items())
        if not versions:
            return "serving no model"
        return "serving " + ", ".join(f"{name} v{version}" for name, version in versions)

    def model_changed(self, name: str, old: LoadedModel | None, new: LoadedModel | None) -> None:
        """A `ModelRepository` listener: update STATUS= after a swap or a removal."""
        with self._lock:
            if new is None:
                self._versions.pop(name, None)
            else:
                self._versions[name] = new.version
        self.send(f"STATUS={self.status_text()}")

    @contextlib.asynccontextmanager
    async def watchdog_pings(self) -> AsyncIterator[None]:
        """Ping the watchdog from the event loop while the block runs (if systemd asked)."""
        interval = self.watchdog_interval_s
        if interval is None:
            yield
            return
        task = asyncio.create_task(self._ping_forever(interval), name="systemd-watchdog")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _ping_forever(self, interval: float) -> None:
        while True:
            self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        """Close the socket."""
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


def _socket_address(value: str) -> str | None:
    """The sendto() address of $NOTIFY_SOCKET, or None when unset or of an unknown kind."""
    if value.startswith("@"):
        return "\0" + value[1:]  # the Linux abstract namespace
    if value.startswith("/"):
        return value
    if value:
        log.warning("NOTIFY_SOCKET=%r is not a unix socket path: not notifying systemd", value)
    return None


def _watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Half of $WATCHDOG_USEC in seconds, if the watchdog is meant for process `pid`."""
    usec, owner = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
    if not usec or (owner and owner != str(pid)):
        return None
    try:
        microseconds = int(usec)
    except ValueError:
        microseconds = 0
    if microseconds <= 0:
        log.warning("WATCHDOG_USEC=%r is not a positive integer: no watchdog pings", usec)
        return None
    return microseconds / 2 / 1_000_000


def stream_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """Whether `stream` is connected to journald ($JOURNAL_STREAM names its device and inode)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        stat = os.fstat(stream.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (ValueError, OSError):
        # Not a real file (tests capture stderr) or a malformed variable.
        return False


class OneLineFormatter(logging.Formatter):
    """One line per record: a traceback is folded onto the line of its message.

    With `journal`, the line starts with the record's syslog priority (`<3>` for ERROR) and has
    no timestamp, since journald adds both.
    """

    def __init__(self, *, journal: bool) -> None:
        super().__init__(JOURNAL_FORMAT if journal else PLAIN_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        """Format `record` on a single line."""
        record.priority = syslog_priority(record.levelno)
        return " | ".join(super().format(record).splitlines())


def syslog_priority(level: int) -> int:
    """The syslog priority (0 emerg .. 7 debug) of a logging level."""
    for lowest, priority in _PRIORITIES:
        if level >= lowest:
            return priority
    return _DEBUG_PRIORITY


def configure_logging(level: str, stream: TextIO | None = None) -> None:
    """Log to `stream` (stderr): plain lines with timestamps, or journal lines under systemd."""
    target = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(target)
    handler.setFormatter(OneLineFormatter(journal=stream_is_journal(target)))
    logging.basicConfig(level=level, handlers=[handler])
