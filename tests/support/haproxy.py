"""HAProxy in front of registry replicas: the config docs/operations.md shows, on free ports.

The balancer checks each replica's `/healthz` twice a second and takes one out after two
failed checks. A request whose replica refuses the connection or dies before answering is
sent again to another one (`retry-on`, `option redispatch`). Its statistics socket tells
which replica answered how many requests.
"""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from edge_common import processes
from edge_common.processes import LOCALHOST, accepts_connections, free_port

START_TIMEOUT = 20.0
_FALLBACKS = ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy")


class HaproxyNotFoundError(RuntimeError):
    """haproxy is not installed; the message says how to get it."""


def find_haproxy() -> Path:
    """The haproxy binary (scripts/ensure-haproxy.sh installs it)."""
    found = shutil.which("haproxy")
    for candidate in (found, *_FALLBACKS):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    raise HaproxyNotFoundError(
        "the replica tests need HAProxy: run scripts/ensure-haproxy.sh "
        "(or 'sudo apt-get install -y haproxy')"
    )


def balancer_config(port: int, servers: dict[str, int], stats_socket: Path) -> str:
    """An HTTP balancer on `port` over the registries at `servers` (name: API port)."""
    lines = [
        "global",
        "    maxconn 512",
        f"    stats socket {stats_socket} mode 600 level admin",
        "",
        "defaults",
        "    mode http",
        "    timeout connect 2s",
        "    timeout client 120s",
        "    timeout server 120s",
        "    retries 3",
        "    option redispatch 1",
        "    retry-on conn-failure empty-response response-timeout",
        "",
        "frontend registry_api",
        f"    bind {LOCALHOST}:{port}",
        "    default_backend registry_replicas",
        "",
        "backend registry_replicas",
        "    balance roundrobin",
        "    option httpchk GET /healthz",
        "    http-check expect status 200",
        "    default-server inter 500ms fall 2 rise 2",
    ]
    lines += [f"    server {name} {LOCALHOST}:{p} check" for name, p in servers.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Balancer:
    """One haproxy process balancing HTTP over `servers` (name: API port)."""

    workdir: Path
    servers: dict[str, int]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The balanced API's base URL."""
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def stats_socket(self) -> Path:
        """The admin socket `show stat` is asked on."""
        return self.workdir / "haproxy.sock"

    @property
    def log_file(self) -> Path:
        """What haproxy printed."""
        return self.workdir / "haproxy.log"

    def start(self) -> None:
        """Write the config, check it with `haproxy -c`, start it and wait for its listener."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "haproxy.cfg"
        config.write_text(balancer_config(self.port, self.servers, self.stats_socket))
        binary = find_haproxy()
        checked = subprocess.run(
            [str(binary), "-c", "-f", str(config)], capture_output=True, text=True, check=False
        )
        if checked.returncode != 0:
            raise AssertionError(f"haproxy refused {config}:\n{checked.stdout}{checked.stderr}")
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                [str(binary), "-db", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT
        # The stats socket may come a moment after the listener: wait_for_status needs it.
        while not (self._listening() and self.stats_socket.exists()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"haproxy did not start:\n{self.log_file.read_text()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop haproxy."""
        processes.stop(self.process, timeout=10)

    def server_stats(self) -> dict[str, dict[str, str]]:
        """`show stat` of the backend's servers: name -> HAProxy's columns (status, hrsp_2xx)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(5)
            conn.connect(str(self.stats_socket))
            conn.sendall(b"show stat\n")
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        text = answer.decode().lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["svname"]: row
            for row in rows
            if row["pxname"] == "registry_replicas" and row["svname"] in self.servers
        }

    def wait_for_status(self, name: str, status: str, timeout: float = 30.0) -> None:
        """Wait until the health checks put server `name` in `status` (UP, DOWN)."""
        deadline = time.monotonic() + timeout
        while (seen := self.server_stats()[name]["status"]) != status:
            if time.monotonic() > deadline:
                raise AssertionError(f"haproxy server {name} stayed {seen}, not {status}")
            time.sleep(0.1)

    def _listening(self) -> bool:
        return accepts_connections(LOCALHOST, self.port)
