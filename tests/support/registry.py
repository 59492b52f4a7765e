"""Driving the product as an operator does: `model-registry` commands and a `serve` process."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_common import processes
from edge_common.processes import LOCALHOST, free_port

from .broker import Broker, BrokerFactory

BIN = Path(sys.executable).parent
START_TIMEOUT = 60.0  # the registry imports onnxruntime and scikit-learn before it listens


def cli(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `model-registry ARGS`; with `check`, fail with its stderr when it exits non-zero."""
    result = subprocess.run(
        [str(BIN / "model-registry"), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"model-registry {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
        )
    return result


def cli_json(*args: str) -> Any:
    """Run a `model-registry` command with --json and parse its output."""
    return json.loads(cli(*args, "--json").stdout)


@dataclass
class RegistryProcess:
    """A `model-registry serve` subprocess on a free API port."""

    home: Path
    broker_args: tuple[str, ...]
    port: int = field(default_factory=free_port)
    cwd: Path | None = None  # the directory `serve` is started from (default: the tests')
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The API's base URL."""
        return f"http://{LOCALHOST}:{self.port}"

    @property
    def log_file(self) -> Path:
        """Where the process writes its output."""
        return self.home / "serve.log"

    def start(self) -> None:
        """Start `serve` and wait until /healthz answers."""
        argv = [str(BIN / "model-registry"), "serve", "--home", str(self.home)]
        argv += ["--listen", f"{LOCALHOST}:{self.port}", *self.broker_args]
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"model-registry serve exited:\n{self.log_file.read_text()}")
            if self._healthy():
                return
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"model-registry serve did not start:\n{self.log_file.read_text()}")

    def stop(self) -> None:
        """Stop the process with SIGTERM (SIGKILL if it hangs)."""
        processes.stop(self.process, timeout=20)

    def kill(self) -> None:
        """SIGKILL: the registry host lost power, as far as the database and broker can tell."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False


@contextlib.contextmanager
def serving_home(directory: Path) -> Iterator[Path]:
    """A registry home made by `init` under `directory`, `serve` running on the embedded broker."""
    home = directory / "home"
    cli("init", "--home", str(home))
    registry = RegistryProcess(home, ("--embedded-broker", f"{LOCALHOST}:{free_port()}"))
    registry.start()
    try:
        yield home
    finally:
        registry.stop()


def home_with_broker(directory: Path, brokers: BrokerFactory) -> tuple[Path, Broker]:
    """A registry home made by `init`, and mosquitto running on the files broker-config writes."""
    home = directory / "home"
    cli("init", "--home", str(home))
    port = free_port()
    broker_dir = directory / "broker"
    cli("broker-config", "--home", str(home), "--out", str(broker_dir), "--port", str(port),
        "--listen-host", LOCALHOST)  # fmt: skip
    return home, brokers.from_config(broker_dir / "mosquitto.conf", port=port)
