"""A real deployment on this machine: mosquitto from `broker-config`, `model-registry serve`,
devices provisioned through the API, and `edge-agent run` processes (as tests/support does)."""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_common.processes import LOCALHOST, free_port, wait_until_listening

from benchmarks.common import BIN, start, stop, wait_ready


@dataclass(frozen=True)
class ApiClient:
    """The few registry API calls the benchmarks make (JSON and multipart, standard library).

    Kept here rather than importing model_registry.cli, so that the benchmarks depend only on
    the registry's HTTP API and its CLI as a command.
    """

    url: str
    token: str

    def _send(self, path: str, body: bytes, content_type: str) -> Any:
        request = urllib.request.Request(  # noqa: S310 - the benchmark's own loopback registry
            self.url + path,
            data=body,
            method="POST",
            headers={"Content-Type": content_type, "Authorization": f"Bearer {self.token}"},
        )
        with urllib.request.urlopen(request, timeout=600) as response:  # noqa: S310
            return json.loads(response.read())

    def post_json(self, path: str, body: dict[str, Any]) -> Any:
        """POST a JSON object."""
        return self._send(path, json.dumps(body).encode(), "application/json")

    def post_files(self, path: str, fields: dict[str, bytes]) -> Any:
        """POST a multipart form whose fields are all files."""
        boundary = "----bench-" + secrets.token_hex(12)
        body = bytearray()
        for name, data in fields.items():
            body += f"--{boundary}\r\n".encode()
            body += f'Content-Disposition: form-data; name="{name}"; filename="{name}"\r\n'.encode()
            body += b"Content-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
        body += f"--{boundary}--\r\n".encode()
        return self._send(path, bytes(body), f"multipart/form-data; boundary={boundary}")


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `model-registry ARGS`; raise with its stderr when it fails."""
    result = subprocess.run(
        [str(BIN / "model-registry"), *args], capture_output=True, text=True, timeout=timeout,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"model-registry {' '.join(args)} exited {result.returncode}: "
                           f"{result.stderr}")  # fmt: skip
    return result


def mosquitto_binary() -> str:
    """The broker binary (/usr/sbin is not always on PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if Path(candidate).exists():
            return candidate
    raise RuntimeError("mosquitto is not installed: run benchmarks/ensure-tools.sh")


@dataclass
class Deployment:
    """mosquitto + registry in `root`; devices and agents added on demand."""

    root: Path
    chunk_kib: int = 256
    database: str = ""  # a postgresql:// URL; empty: the home's SQLite file
    mqtt_port: int = field(default_factory=free_port)
    api_port: int = field(default_factory=free_port)
    broker: subprocess.Popen[bytes] | None = None
    registry: subprocess.Popen[bytes] | None = None

    @property
    def home(self) -> Path:
        """The registry home."""
        return self.root / "home"

    @property
    def api_url(self) -> str:
        """The registry's REST API."""
        return f"http://{LOCALHOST}:{self.api_port}"

    def start(self, before_serve: Callable[[], None] | None = None) -> None:
        """init, broker-config, mosquitto, `before_serve` (with the home made), serve."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        cli(
            "init",
            "--home",
            str(self.home),
            *(("--database", self.database) if self.database else ()),
        )
        self._set_chunk(self.chunk_kib)
        self._broker_files()
        self.broker = start(
            [mosquitto_binary(), "-c", str(self.root / "broker" / "mosquitto.conf")],
            self.root / "mosquitto.log",
        )
        self._wait_port(self.mqtt_port)
        if before_serve is not None:
            before_serve()
        self._start_registry()

    def stop(self) -> None:
        """Stop the registry and the broker."""
        stop(self.registry)
        stop(self.broker)

    def restart_registry(self, chunk_kib: int) -> None:
        """Serve again with another `[artifacts] chunk_size_kib` (same port, same home)."""
        stop(self.registry)
        self._set_chunk(chunk_kib)
        self._start_registry()

    def _start_registry(self) -> None:
        log_file = self.root / "registry.log"
        argv = [str(BIN / "model-registry"), "serve", "--home", str(self.home)]
        argv += ["--listen", f"{LOCALHOST}:{self.api_port}"]
        argv += ["--mqtt-url", f"mqtt://{LOCALHOST}:{self.mqtt_port}"]
        self.registry = start(argv, log_file)
        wait_ready(f"{self.api_url}/healthz", self.registry, log_file, timeout=120, interval=0.1)

    def _set_chunk(self, chunk_kib: int) -> None:
        config = self.home / "registry.toml"
        lines = [
            f"chunk_size_kib = {chunk_kib}" if line.startswith("chunk_size_kib") else line
            for line in config.read_text().splitlines()
        ]
        config.write_text("\n".join(lines) + "\n")
        self.chunk_kib = chunk_kib

    def _broker_files(self) -> None:
        args = ["broker-config", "--home", str(self.home), "--out", str(self.root / "broker")]
        args += ["--port", str(self.mqtt_port), "--listen-host", LOCALHOST]
        cli(*args)

    @staticmethod
    def _wait_port(port: int, timeout: float = 20) -> None:
        wait_until_listening(LOCALHOST, port, timeout)

    def client(self) -> ApiClient:
        """An admin API client."""
        token = (self.home / "secrets" / "cli-token").read_text().strip()
        return ApiClient(self.api_url, token)

    def push(self, model: Path, name: str, label: str = "bench") -> int:
        """Push a model file as is (no quantization); return its version."""
        fields = {"model": model.read_bytes(), "label": label.encode()}
        release: dict[str, Any] = self.client().post_files(f"/v1/models/{name}/versions", fields)
        return int(release["version"])

    def provision(self, device_ids: list[str], group: str) -> dict[str, Path]:
        """Register devices through the API (the running broker admits them), write bundles."""
        api = self.client()
        bundles = {}
        for device_id in device_ids:
            device = api.post_json("/v1/devices", {"device_id": device_id, "group": group})
            if device["broker"]["status"] != "added":
                raise RuntimeError(f"{device_id}: {device['broker']['detail']}")
            bundle = self.root / "bundles" / device_id
            bundle.mkdir(parents=True, exist_ok=True)
            for name, encoded in device["bundle"].items():
                path = bundle / name
                path.write_bytes(base64.b64decode(encoded))
                os.chmod(path, 0o600 if name == "mqtt-password" else 0o644)
            bundles[device_id] = bundle
        return bundles

    def deploy(self, name: str, version: int, group: str) -> tuple[float, float]:
        """`model-registry deploy`; return (started, returned) in time.time() seconds."""
        started = time.time()
        cli("deploy", name, str(version), "--group", group, "--url", self.api_url,
            "--token", self.client().token)  # fmt: skip
        return started, time.time()


def set_transport(config: Path, transport: str) -> None:
    """Switch a bundle's device.toml between the MQTT and HTTP artifact transports."""
    text = config.read_text()
    for old in ('transport = "mqtt"', 'transport = "http"'):
        text = text.replace(old, f'transport = "{transport}"')
    config.write_text(text)


@dataclass
class Agent:
    """One `edge-agent run` process."""

    device_id: str
    bundle: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Its local endpoint."""
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def log_file(self) -> Path:
        """Its output."""
        return self.bundle / "agent.log"

    def start(self, cpus: str | None = None) -> None:
        """Start it (returns at once; see wait_live)."""
        argv = [str(BIN / "edge-agent"), "run", "--config", str(self.bundle / "device.toml")]
        argv += ["--listen", f"{LOCALHOST}:{self.port}", "--state-dir", str(self.bundle / "state")]
        self.process = start(argv, self.log_file, cpus=cpus)

    def wait_live(self, timeout: float = 120) -> float:
        """Wait for /v2/health/live."""
        return wait_ready(f"{self.url}/v2/health/live", self.process, self.log_file, timeout)

    def stop(self) -> None:
        """SIGTERM."""
        stop(self.process)
