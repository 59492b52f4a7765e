"""Running `edge-agent run` as a device would, and talking to it as a local application."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_common.processes import LOCALHOST, free_port

BIN = Path(sys.executable).parent
START_TIMEOUT = 60.0


@dataclass
class AgentProcess:
    """An `edge-agent run` subprocess serving on a free port with its own state directory."""

    config: Path
    state_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def url(self) -> str:
        """Base URL of the local endpoint."""
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def log_file(self) -> Path:
        """Where the agent's output goes (appended across restarts)."""
        return self.state_dir.parent / f"{self.state_dir.name}.log"

    def start(self) -> None:
        """Start the agent and wait until its endpoint answers."""
        argv = [str(BIN / "edge-agent"), "run", "--config", str(self.config)]
        argv += ["--listen", f"{LOCALHOST}:{self.port}", "--state-dir", str(self.state_dir)]
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"edge-agent exited:\n{self.log_file.read_text()}")
            if self.get("/v2/health/live", expect_json=False) is not None:
                return
            time.sleep(0.05)
        raise AssertionError(f"edge-agent did not start:\n{self.log_file.read_text()}")

    def stop(self) -> None:
        """SIGTERM: the graceful path."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: power loss, as far as the agent can tell."""
        self._end(signal.SIGKILL)

    def _end(self, signum: int) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signum)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def get(self, path: str, *, expect_json: bool = True) -> Any:
        """GET `path`; None when the agent does not answer or answers an error."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as response:  # noqa: S310
                body = response.read()
        except (urllib.error.URLError, OSError):
            return None
        return json.loads(body) if expect_json else body

    def get_state(self) -> Any:
        """The agent's state.json, as it is on disk now."""
        return json.loads((self.state_dir / "state.json").read_text())

    def serving_version(self, model: str) -> int | None:
        """The version the agent serves for `model` (from /v2/models/{m}), or None."""
        metadata = self.get(f"/v2/models/{model}")
        if not metadata:
            return None
        return int(metadata["versions"][0])

    def wait_for_version(self, model: str, version: int, timeout: float = 60.0) -> None:
        """Wait until the agent serves `version` of `model`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.serving_version(model) == version:
                return
            time.sleep(0.1)
        raise AssertionError(
            f"agent serves {self.serving_version(model)} of {model}, not {version}:\n"
            f"{self.log_file.read_text()[-4000:]}"
        )

    def infer(self, model: str, rows: list[list[float]], input_name: str = "X") -> tuple[int, Any]:
        """POST an OIP v2 infer request; return (status, body)."""
        shape = [len(rows), len(rows[0])]
        body = {"inputs": [{"name": input_name, "datatype": "FP32", "shape": shape, "data": rows}]}
        request = urllib.request.Request(  # noqa: S310 - always our http URL
            f"{self.url}/v2/models/{model}/infer",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310 - http URL
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as e:
            return e.code, e.read()
        except (urllib.error.URLError, OSError) as e:
            return 0, str(e)
