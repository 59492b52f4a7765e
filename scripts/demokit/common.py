"""What every part of the demo uses: its settings, its errors, the terminal and signals."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import TypeVar

from edge_common.processes import accepts_connections

BIN = Path(sys.executable).parent  # the virtualenv's bin: model-registry, edge-agent
HOST = "127.0.0.1"
MODEL = "classifier"
GROUP = "lab"
DEVICES = ("cam-1", "cam-2")
N_FEATURES = 32
MARKER = ".edge-model-runtime-demo"  # a re-run only ever deletes a directory holding this file
INDENT = " " * 9
LEFT_BEHIND = (
    ("registry-home/", "the registry: keys, root.json, registry.db, both releases in blobs/"),
    ("models/", "v1/v2 .joblib and .onnx, holdout.npz"),
    ("devices/cam-1/, cam-2/", "bundles (device.toml, root.json, mqtt-password), state/ with v2"),
    ("logs/", "registry, cam-1, cam-2 and commands.log (every command, its output), pids.txt"),
)

START_TIMEOUT_S = 90.0  # the registry imports onnxruntime and scikit-learn before it listens
DEPLOY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 40.0  # the agent drains in-flight requests for up to 30 s
CLI_TIMEOUT_S = 300.0
# Variables that would point the CLI at another registry than the demo's home.
FOREIGN_ENV = ("MODEL_REGISTRY_URL", "MODEL_REGISTRY_TOKEN", "MODEL_REGISTRY_HOME")


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StepError(Exception):
    """A step failed; the message says why in one or two sentences."""


T = TypeVar("T")


def need(value: T | None, what: str) -> T:
    """`value`, which an earlier step set."""
    if value is None:
        raise StepError(f"{what} is missing: an earlier step did not finish")
    return value


def say(text: str = "", *, end: str = "\n") -> None:
    """Print and flush at once: the output is progress, also through pipes."""
    with suppress(BrokenPipeError):
        print(text, end=end, flush=True)


def shown_path(path: Path, start: Path | None = None) -> str:
    """`path` relative to `start` (default: the current directory) when below it, else absolute."""
    start = (start or Path.cwd()).absolute()
    try:
        relative = path.absolute().relative_to(start)
    except ValueError:
        return str(path.absolute())
    return str(relative) if str(relative) != "." else "."


def port_in_use(port: int) -> bool:
    """Whether something accepts connections on HOST:port."""
    return accepts_connections(HOST, port)


class Signals:
    """SIGINT, SIGTERM and SIGHUP become `Interrupted`, except inside `deferred()` blocks."""

    def __init__(self) -> None:
        self._deferring = False
        self._pending: int | None = None

    def install(self, handler: Callable[[int, FrameType | None], None] | None = None) -> None:
        """Route the three signals to `handler` (default: raise `Interrupted`)."""
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, handler or self._interrupt)

    def _interrupt(self, signum: int, _frame: FrameType | None) -> None:
        if self._deferring:
            self._pending = signum
            return
        raise Interrupted(signum)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """Hold a signal until the block is done, then raise it."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._pending is not None:
            signum, self._pending = self._pending, None
            raise Interrupted(signum)


SIGNALS = Signals()
