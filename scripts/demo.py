#!/usr/bin/env python3
"""`make demo`: the whole operator story, end to end, on one machine.

A registry with its embedded MQTT broker, a scikit-learn model pushed with int8 quantization and
the accuracy gate, two provisioned devices with their agents, a deployment, predictions over Open
Inference Protocol v2 (JSON as curl sends it, then tritonclient), a second version swapped in
under live traffic, `devices list`, and a clean shutdown.

The product is driven only through what a user touches: the `model-registry` and `edge-agent`
commands (as subprocesses, from the working directory, so every command shown can be pasted),
HTTP to the agents, and tritonclient. Every process started is in its own process group and in a
tracked list; all of them are stopped on success, on failure and on Ctrl-C (SIGINT/SIGTERM/SIGHUP).

    .venv/bin/python scripts/demo.py [--dir demo-work]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO, TypeVar

BIN = Path(sys.executable).parent  # the virtualenv's bin: model-registry, edge-agent
HOST = "127.0.0.1"
MODEL = "classifier"
GROUP = "lab"
DEVICES = ("cam-1", "cam-2")
N_FEATURES = 32
MARKER = ".edge-model-runtime-demo"  # a re-run only ever deletes a directory holding this file
STEPS = 16
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


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int) -> bool:
    """Whether something accepts connections on HOST:port."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


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


# --------------------------------------------------------------------------------- processes


@dataclass
class Tracked:
    """A process the demo started."""

    name: str
    process: subprocess.Popen[Any]
    shown: str
    log: Path | None = None


@dataclass
class Processes:
    """Every process the demo starts: in its own process group, recorded, and stopped at the end.

    Each child runs with `start_new_session`, so Ctrl-C in the terminal reaches only the demo,
    which then stops the agents before the registry, in order, and kills what does not stop.
    """

    cwd: Path
    logs: Path
    running: list[Tracked] = field(default_factory=list)
    hurry: bool = False  # a second Ctrl-C while stopping: SIGKILL at once

    def __post_init__(self) -> None:
        self.env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
        self.env["PATH"] = f"{BIN}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["PYTHONUNBUFFERED"] = "1"  # logs appear as things happen

    def _record(self, tracked: Tracked) -> None:
        self.running.append(tracked)
        with (self.logs / "pids.txt").open("a") as pids:
            pids.write(f"{tracked.process.pid}\t{tracked.name}\t{tracked.shown}\n")

    def _popen(self, name: str, program: str, args: tuple[str, ...], **kwargs: Any) -> Tracked:
        shown = shlex.join([program, *args])
        with SIGNALS.deferred():  # Ctrl-C between Popen and the record would orphan a process
            process = subprocess.Popen(  # noqa: S603 - our own console scripts and arguments
                [str(BIN / program), *args],
                cwd=self.cwd,
                env=self.env,
                start_new_session=True,
                **kwargs,
            )
            tracked = Tracked(name, process, shown)
            self._record(tracked)
        return tracked

    def start(self, name: str, program: str, *args: str) -> Tracked:
        """Start a long-running command with its output in logs/NAME.log."""
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            out.write(f"$ {shlex.join([program, *args])}\n".encode())
            out.flush()
            tracked = self._popen(name, program, args, stdout=out, stderr=subprocess.STDOUT)
        tracked.log = log
        return tracked

    def run(self, program: str, *args: str, timeout: float = CLI_TIMEOUT_S) -> str:
        """Run a command to completion; return its stdout, or fail with its stderr."""
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
        tracked = self._popen(program, program, args, **pipes)
        process, shown = tracked.process, tracked.shown
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._signal(tracked, signal.SIGKILL)
            stdout, stderr = process.communicate()
            self._log_command(shown, stdout, stderr, "killed after the timeout")
            raise StepError(f"`{shown}` did not finish within {timeout:.0f} s") from None
        self.running.remove(tracked)
        self._log_command(shown, stdout, stderr, f"exit {process.returncode}")
        if process.returncode != 0:
            reason = stderr.strip() or f"exit code {process.returncode}"
            raise StepError(f"`{shown}` failed: {reason}")
        return str(stdout)

    def _log_command(self, shown: str, stdout: str, stderr: str, outcome: str) -> None:
        with (self.logs / "commands.log").open("a") as log:
            log.write(f"$ {shown}\n{stdout}{stderr}[{outcome}]\n\n")

    def _signal(self, tracked: Tracked, signum: int) -> None:
        # poll() reaps an exited child; while it has not been reaped its pid (and so its
        # process group id) cannot be reused, so the signal reaches only what we started.
        if tracked.process.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(tracked.process.pid, signum)

    def stop_many(self, group: list[Tracked], timeout: float = STOP_TIMEOUT_S) -> list[str]:
        """Stop these processes together (SIGTERM to all, then wait; SIGKILL stragglers)."""
        started = time.monotonic()
        for tracked in group:
            self._signal(tracked, signal.SIGKILL if self.hurry else signal.SIGTERM)
        outcomes = []
        for tracked in group:
            killed = False
            while tracked.process.poll() is None:
                if self.hurry or time.monotonic() - started > timeout:
                    self._signal(tracked, signal.SIGKILL)
                    killed = True
                    tracked.process.wait()
                    break
                time.sleep(0.05)
            if tracked in self.running:
                self.running.remove(tracked)
            code = tracked.process.returncode
            elapsed = time.monotonic() - started
            if killed:
                outcomes.append(f"killed with SIGKILL after {elapsed:.1f} s")
            else:
                outcomes.append(f"exit code {code}, {elapsed:.1f} s")
        return outcomes

    def stop_all(self) -> list[str]:
        """Stop everything still running: agents first, then the registry, then commands."""

        def order(tracked: Tracked) -> int:
            return 0 if tracked.name.startswith("cam-") else 1 if tracked.name == "registry" else 2

        lines = []
        for rank in (0, 1, 2):
            group = [t for t in self.running if order(t) == rank]
            if group:
                for tracked, outcome in zip(group, self.stop_many(group), strict=True):
                    lines.append(f"{tracked.name} (pid {tracked.process.pid}): {outcome}")
        return lines


# ------------------------------------------------------------------------------------ agents


@dataclass
class Response:
    """An HTTP answer as curl -i would show it."""

    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


def http(url: str, body: dict[str, Any] | None = None, timeout: float = 10.0) -> Response | None:
    """GET (or POST a JSON body) to an agent; None when nothing answers."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=data, headers=headers)  # noqa: S310 - http URL
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
            return Response(answer.status, answer.reason, answer.getheaders(), answer.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, e.reason, list(e.headers.items()), e.read())
    except (urllib.error.URLError, OSError):
        return None


@dataclass
class Agent:
    """One device's agent as a local application sees it: an HTTP endpoint."""

    device: str
    port: int
    bundle: Path
    tracked: Tracked | None = None

    @property
    def url(self) -> str:
        """Base URL of the agent's inference endpoint."""
        return f"http://{HOST}:{self.port}"

    def status(self, path: str) -> int | None:
        """The HTTP status of GET path, or None."""
        answer = http(self.url + path, timeout=5)
        return answer.status if answer else None

    def metadata(self) -> dict[str, Any] | None:
        """GET /v2/models/{MODEL}, or None while the model is not served."""
        answer = http(f"{self.url}/v2/models/{MODEL}", timeout=5)
        if answer is None or answer.status != 200:
            return None
        metadata: dict[str, Any] = answer.json()
        return metadata

    def update_status(self) -> dict[str, Any]:
        """What /v1/status says of MODEL's update (phase, last error), or {} if unreachable."""
        answer = http(f"{self.url}/v1/status", timeout=5)
        if answer is None or answer.status != 200:
            return {}
        updates: dict[str, Any] = answer.json().get("updates", {})
        return dict(updates.get(MODEL) or {})

    def serving(self) -> str | None:
        """The version of MODEL this agent serves, or None."""
        metadata = self.metadata()
        return str(metadata["versions"][0]) if metadata else None


def wait_until(what: str, check: Callable[[], bool], timeout: float, watch: list[Tracked]) -> None:
    """Poll `check` until it holds; fail when a watched process exits or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for tracked in watch:
            if tracked.process.poll() is not None:
                raise StepError(
                    f"{tracked.name} exited (code {tracked.process.returncode}) while waiting "
                    f"for {what}; see {shown_path(tracked.log or Path())}"
                )
        if check():
            return
        time.sleep(0.1)
    raise StepError(f"timed out after {timeout:.0f} s waiting for {what}")


class Traffic:
    """A local application calling one agent in a loop while a new version is deployed."""

    def __init__(self, agent: Agent, body: dict[str, Any]) -> None:
        self.agent, self.body = agent, body
        self.versions: Counter[str] = Counter()
        self.failures: list[str] = []
        self.first_seen: dict[str, float] = {}
        self.switches = 0
        self._last: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="traffic", daemon=True)

    def start(self) -> None:
        """Start sending requests."""
        self._thread.start()

    def stop(self) -> None:
        """Stop sending and wait for the request in flight."""
        self._stop.set()
        self._thread.join(timeout=30)

    @property
    def total(self) -> int:
        """Requests sent so far."""
        return sum(self.versions.values()) + len(self.failures)

    def _run(self) -> None:
        url = f"{self.agent.url}/v2/models/{MODEL}/infer"
        while not self._stop.is_set():
            answer = http(url, self.body)
            if answer is None:
                self.failures.append("no answer")
            elif answer.status != 200:
                self.failures.append(f"{answer.status} {answer.body[:200]!r}")
            else:
                version = str(answer.json()["model_version"])
                self.versions[version] += 1
                self.first_seen.setdefault(version, time.monotonic())
                if self._last is not None and version != self._last:
                    self.switches += 1
                self._last = version


# ------------------------------------------------------------------------------------- model


@dataclass
class Data:
    """The synthetic task: features and labels, split into training and holdout rows."""

    x_train: Any
    y_train: Any
    x_holdout: Any
    y_holdout: Any


def make_data() -> Data:
    """3 classes, 32 features, 16 of them informative: small, but not trivial for an MLP."""
    import numpy as np  # noqa: PLC0415 - heavy imports only where the demo needs them
    from sklearn.datasets import make_classification  # noqa: PLC0415

    features, labels = make_classification(
        n_samples=3000, n_features=N_FEATURES, n_informative=16, n_classes=3, random_state=11
    )
    features = features.astype(np.float32)
    return Data(features[:2400], labels[:2400], features[2400:], labels[2400:])


def train(data: Data, epochs: int, path: Path, start: Any = None) -> tuple[Any, float]:
    """Fit MLPClassifier 32 -> (256, 256) -> 3 (or go on training `start`), save it with joblib.

    Returns the model and its holdout accuracy.
    """
    import copy  # noqa: PLC0415

    import joblib  # noqa: PLC0415
    from sklearn.exceptions import ConvergenceWarning  # noqa: PLC0415
    from sklearn.neural_network import MLPClassifier  # noqa: PLC0415
    from threadpoolctl import threadpool_limits  # noqa: PLC0415 - installed with scikit-learn

    if start is None:
        model = MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=epochs, random_state=11)
    else:  # retraining: v1's weights, `epochs` more passes over the data
        model = copy.deepcopy(start).set_params(warm_start=True, max_iter=epochs)
    # One BLAS thread: with a thread per core, OpenBLAS and OpenMP spin against each other and
    # against the registry and agents on a small machine, and training takes ten times longer.
    with warnings.catch_warnings(), threadpool_limits(1):
        # Few epochs on purpose: "did not converge" is expected here.
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(data.x_train, data.y_train)
    joblib.dump(model, path)
    return model, float(model.score(data.x_holdout, data.y_holdout))


# -------------------------------------------------------------------------------------- demo


@dataclass
class Step:
    """One numbered step: its line, then the details it collected."""

    number: int
    title: str
    details: list[str] = field(default_factory=list)

    def note(self, *lines: str) -> None:
        """Add detail lines, printed (indented) once the step's line is complete."""
        for line in lines:
            self.details.extend(line.splitlines() or [""])


class Demo:
    """The sixteen steps, and what the user needs to keep playing afterwards."""

    def __init__(self, work: Path) -> None:
        self.work = work.absolute()
        self.home = self.work / "registry-home"
        self.models = self.work / "models"
        self.logs = self.work / "logs"
        self.procs = Processes(self.work, self.logs)
        self.agents = [Agent(device, 0, self.work / "devices" / device) for device in DEVICES]
        self.registry: Tracked | None = None
        self.api_url = ""
        self.mqtt_url = ""
        self.data: Data | None = None
        self.v1_model: Any = None
        self.input_name = ""
        self.current: Step | None = None
        self.started = time.monotonic()
        self.sample_row: list[float] = []
        self.keep = False  # --keep: everything stays up at the end until Ctrl-C

    # ---- framework

    @contextmanager
    def step(self, number: int, title: str) -> Iterator[Step]:
        """Print `[ n/16] title ...`, run the body, finish the line with its duration."""
        step = Step(number, title)
        self.current = step
        say(f"[{number:2d}/{STEPS}] {title} ... ", end="")
        began = time.monotonic()
        try:
            yield step
        except (Exception, Interrupted) as e:
            outcome = "interrupted" if isinstance(e, Interrupted) else "FAILED"
            say(f"{outcome} after {time.monotonic() - began:.1f} s")
            for line in step.details:
                say(INDENT + line)
            raise
        say(f"{time.monotonic() - began:.1f} s")
        for line in step.details:
            say(INDENT + line)

    def cli(self, *args: str) -> str:
        """Run `model-registry ARGS` in the working directory."""
        return self.procs.run("model-registry", *args)

    def cli_json(self, *args: str) -> Any:
        """Run `model-registry ARGS --json` and parse its answer."""
        return json.loads(self.cli(*args, "--json"))

    def home_args(self) -> tuple[str, str]:
        """--home, relative to the working directory the commands run in."""
        return ("--home", shown_path(self.home, self.work))

    # ---- the story

    def run(self) -> None:
        """Every step in order."""
        self.prepare()
        self.init_home()
        self.start_registry()
        self.train_v1()
        self.convert(5, "v1")
        self.push(6, "v1", "first training")
        self.provision()
        self.start_agents()
        self.deploy_v1()
        self.predict_curl()
        self.predict_triton()
        self.train_v2()
        self.push(13, "v2", "retrained, 10 more epochs")
        self.swap()
        self.devices_list()
        if self.keep:
            self.keep_up()
        self.shutdown()

    def prepare(self) -> None:
        where = shown_path(self.work)
        if self.work.exists() and any(self.work.iterdir()):
            self._refuse_to_delete()
            title = f"Start fresh: remove {where}/ (left by a previous run) and recreate it"
        else:
            title = f"Create the working directory {where}/"
        with self.step(1, title) as step:
            if self.work.exists():
                shutil.rmtree(self.work)
            for directory in (self.work, self.models, self.logs, self.work / "devices"):
                directory.mkdir(parents=True, exist_ok=True)
            (self.work / MARKER).write_text("created by scripts/demo.py; removed by its next run\n")
            step.note(f"commands run from {where}/; each process logs to {where}/logs/")

    def _refuse_to_delete(self) -> None:
        if not (self.work / MARKER).exists():
            raise StepError(
                f"{self.work} exists and was not made by the demo; move it away or pass --dir"
            )
        serve_file = self.home / "serve.json"
        try:
            pid = int(json.loads(serve_file.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        if Path(f"/proc/{pid}").exists():
            raise StepError(
                f"a registry started in {self.work} is still running (pid {pid}); stop it "
                f"(kill {pid}) and any agents you started there, then run the demo again"
            )

    def init_home(self) -> None:
        with self.step(2, "Create the registry home: keys, signed trust root, database") as step:
            output = self.cli("init", *self.home_args())
            step.note(f"$ model-registry init {' '.join(self.home_args())}")
            # The CLI reads the admin token from registry-home/secrets/cli-token; the demo's
            # output, often pasted into chats and bug reports, need not repeat it.
            hidden = "  mr_... (hidden by the demo; the CLI reads it from secrets/cli-token)"
            step.note(
                *(hidden if line.startswith("  mr_") else line for line in output.splitlines())
            )

    def start_registry(self) -> None:
        title = "Start the registry (REST API + embedded MQTT broker) on free ports"
        with self.step(3, title) as step:
            taken = port_in_use(1883)
            registry = self.procs.start(
                "registry", "model-registry", "serve", *self.home_args(),
                "--listen", f"{HOST}:0", "--embedded-broker", f"{HOST}:0",
            )  # fmt: skip
            self.registry = registry
            serve_file = self.home / "serve.json"

            def recorded() -> bool:
                try:
                    endpoint = json.loads(serve_file.read_text())
                except (OSError, ValueError):
                    return False
                if endpoint.get("pid") != registry.process.pid:
                    return False
                self.api_url, self.mqtt_url = endpoint["api_url"], endpoint["mqtt_url"]
                return True

            what = "the registry to record its address in serve.json"
            wait_until(what, recorded, START_TIMEOUT_S, [registry])
            healthz = http(f"{self.api_url}/healthz")
            if healthz is None or healthz.status != 200:
                raise StepError(f"the registry's {self.api_url}/healthz does not answer 200")
            step.note(
                f"$ {registry.shown}",
                f"API {self.api_url}, MQTT broker {self.mqtt_url} (pid {registry.process.pid})",
                f"dashboard {self.api_url}/ui/ (sign in with an API token; `make demo KEEP=1`"
                " keeps it up at the end)",
                "port 0 lets the system choose; the registry writes the ports it got to "
                "registry-home/serve.json",
            )
            if taken:
                step.note(
                    "(the default MQTT port 1883 is already taken on this machine, probably by "
                    "a system broker: that is why the demo does not use the defaults)"
                )

    def train_v1(self) -> None:
        title = "Train v1 with scikit-learn: MLP 32 -> 256 -> 256 -> 3 classes, 10 epochs"
        with self.step(4, title) as step:
            import numpy as np  # noqa: PLC0415

            self.data = make_data()
            holdout = self.models / "holdout.npz"
            np.savez(holdout, X=self.data.x_holdout, y=self.data.y_holdout)
            self.v1_model, accuracy = train(self.data, 10, self.models / "v1.joblib")
            step.note(
                f"{len(self.data.y_train)} training rows; holdout accuracy {accuracy:.3f} "
                f"on {len(self.data.y_holdout)} rows (saved as models/holdout.npz, arrays X, y)",
                "wrote models/v1.joblib",
            )

    def convert(self, number: int, version: str) -> None:
        with self.step(number, f"Convert {version} to ONNX with `model-registry build-sklearn`"):
            self._convert(version)

    def _convert(self, version: str) -> None:
        step = need(self.current, "the current step")
        args = ("build-sklearn", f"models/{version}.joblib", "--sample", "models/holdout.npz",
                "-o", f"models/{version}.onnx")  # fmt: skip
        output = self.cli(*args)
        step.note(f"$ model-registry {shlex.join(args)}", output.strip())

    def push(self, number: int, version: str, label: str) -> None:
        title = f"Push {version}: int8 quantization and the accuracy gate (at most 1 point lost)"
        with self.step(number, title) as step:
            args = ("push", f"models/{version}.onnx", "--name", MODEL, "--quantize", "int8",
                    "--eval", "models/holdout.npz", "--label", label,
                    *self.home_args())  # fmt: skip
            output = self.cli(*args)  # what the command prints, as you would see it
            step.note(f"$ model-registry {shlex.join(args)}", output.rstrip())

    def provision(self) -> None:
        title = f"Provision two devices in group {GROUP!r}: {', '.join(DEVICES)}"
        with self.step(7, title) as step:
            for agent in self.agents:
                bundle = shown_path(agent.bundle, self.work)
                args = ("devices", "add", agent.device, "--group", GROUP, "--out", bundle,
                        *self.home_args())  # fmt: skip
                self.cli(*args)
                files = ", ".join(sorted(p.name for p in agent.bundle.iterdir()))
                step.note(f"$ model-registry {shlex.join(args)}", f"  bundle: {files}")

    def start_agents(self) -> None:
        with self.step(8, "Start two edge agents, one per device bundle") as step:
            registry = need(self.registry, "the registry")
            for agent in self.agents:
                agent.port = free_port()
                agent.tracked = self.procs.start(
                    agent.device, "edge-agent", "run",
                    "--config", shown_path(agent.bundle / "device.toml", self.work),
                    "--listen", f"{HOST}:{agent.port}",
                )  # fmt: skip
            for agent in self.agents:
                tracked = need(agent.tracked, f"{agent.device}'s agent")
                what = f"{agent.device}'s agent to answer /v2/health/live"
                wait_until(what, answers(agent, "/v2/health/live", 200), START_TIMEOUT_S,
                           [tracked, registry])  # fmt: skip
                ready = agent.status("/v2/health/ready")
                step.note(
                    f"$ {tracked.shown}",
                    f"  {agent.device} agent running (pid {tracked.process.pid}) on "
                    f"{agent.url}: live; /v2/health/ready is {ready} (no model yet)",
                )

    def _wait_for_version(self, version: str, watch: list[Tracked]) -> None:
        for agent in self.agents:
            what = f"{agent.device} to serve {MODEL} v{version}"
            wait_until(what, serves(agent, version), DEPLOY_TIMEOUT_S, watch)

    def _watch(self) -> list[Tracked]:
        return [t for t in (self.registry, *(a.tracked for a in self.agents)) if t is not None]

    def deploy_v1(self) -> None:
        title = f"Deploy v1 to group {GROUP!r} and wait until both agents serve it"
        with self.step(9, title) as step:
            args = ("deploy", MODEL, "1", "--group", GROUP, *self.home_args())
            output = self.cli(*args)
            step.note(f"$ model-registry {shlex.join(args)}", output.strip())
            began = time.monotonic()
            self._wait_for_version("1", self._watch())
            step.note(f"both agents verified, installed and self-tested v1 in "
                      f"{time.monotonic() - began:.1f} s:")  # fmt: skip
            for agent in self.agents:
                metadata = agent.metadata() or {}
                ready = agent.status(f"/v2/models/{MODEL}/ready")
                self.input_name = metadata["inputs"][0]["name"]
                step.note(
                    f"  {agent.device} serves {MODEL} v{agent.serving()} on {agent.url} "
                    f"(model ready: {ready}; input {self.input_name!r} "
                    f"{metadata['inputs'][0]['datatype']} {metadata['inputs'][0]['shape']})"
                )

    def _rows(self, start: int, count: int) -> tuple[list[list[float]], list[int]]:
        data = need(self.data, "the data set")
        rows = data.x_holdout[start : start + count]
        labels = data.y_holdout[start : start + count]
        return [[round(float(v), 3) for v in row] for row in rows], [int(y) for y in labels]

    def _infer_body(self, rows: list[list[float]], request_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": request_id} if request_id else {}
        body["inputs"] = [{"name": self.input_name, "datatype": "FP32",
                           "shape": [len(rows), len(rows[0])], "data": rows}]  # fmt: skip
        return body

    def predict_curl(self) -> None:
        agent = self.agents[0]
        title = f"Predict on {agent.device} over Open Inference Protocol v2 (JSON, like curl)"
        with self.step(10, title) as step:
            rows, labels = self._rows(0, 1)
            self.sample_row = rows[0]
            body = self._infer_body(rows, "demo-1")
            url = f"{agent.url}/v2/models/{MODEL}/infer"
            answer = http(url, body)
            if answer is None:
                raise StepError(f"{url} did not answer")
            step.note(
                f"$ curl -si {url} -H 'Content-Type: application/json' \\",
                f"    -d '{json.dumps(body)}'",
                f"HTTP/1.1 {answer.status} {answer.reason}",
                *(f"{name}: {value}" for name, value in answer.headers),
                "",
                answer.body.decode(errors="replace"),
            )
            if answer.status != 200:
                raise StepError(f"the agent answered {answer.status}")
            label = answer.json()["outputs"][0]["data"][0]
            step.note(f"(predicted class {label}; the holdout row's true class is {labels[0]})")

    def predict_triton(self) -> None:
        agent = self.agents[1]
        with self.step(11, f"Predict on {agent.device} with tritonclient (binary tensors)") as step:
            try:
                import numpy as np  # noqa: PLC0415
                import tritonclient.http as httpclient  # noqa: PLC0415
            except ImportError as e:
                raise StepError(f"{e}; install it with: pip install 'tritonclient[http]'") from e
            rows, labels = self._rows(1, 4)
            client = httpclient.InferenceServerClient(f"{HOST}:{agent.port}")
            try:
                batch = np.array(rows, dtype=np.float32)
                inp = httpclient.InferInput(self.input_name, list(batch.shape), "FP32")
                inp.set_data_from_numpy(batch)  # binary by default
                result = client.infer(MODEL, [inp])
                live, ready = client.is_server_live(), client.is_model_ready(MODEL)
            finally:
                client.close()
            response = result.get_response()
            probabilities = result.as_numpy("probabilities")
            step.note(
                f"client = tritonclient.http.InferenceServerClient({f'{HOST}:{agent.port}'!r})",
                f"client.is_server_live() -> {live}, client.is_model_ready({MODEL!r}) -> {ready}",
                f"inp = InferInput({self.input_name!r}, {list(batch.shape)}, 'FP32'); "
                "inp.set_data_from_numpy(batch)",
                f"result = client.infer({MODEL!r}, [inp])",
                f"  model_version {response['model_version']}",
                f"  label         {result.as_numpy('label').tolist()}   (true: {labels})",
                f"  probabilities {np.round(probabilities.astype(float), 3).tolist()}",
            )

    def train_v2(self) -> None:
        title = "Retrain as v2 (v1 trained 10 more epochs) and convert it to ONNX"
        with self.step(12, title) as step:
            data, v1 = need(self.data, "the data set"), need(self.v1_model, "model v1")
            _model, accuracy = train(data, 10, self.models / "v2.joblib", start=v1)
            step.note(f"holdout accuracy {accuracy:.3f}; wrote models/v2.joblib")
            self._convert("v2")

    def swap(self) -> None:
        agent = self.agents[0]
        title = f"Deploy v2 while a local app keeps calling {agent.device}: the live swap"
        with self.step(14, title) as step:
            rows, _labels = self._rows(5, 1)
            traffic = Traffic(agent, self._infer_body(rows))
            traffic.start()
            try:
                wait_until("the first answers", lambda: traffic.total >= 20, 30, self._watch())
                args = ("deploy", MODEL, "2", "--group", GROUP, *self.home_args())
                deployed = time.monotonic()
                output = self.cli(*args)
                self._wait_for_version("2", self._watch())
                time.sleep(0.5)  # v2 keeps answering for a moment
            finally:
                traffic.stop()
            step.note(f"$ model-registry {shlex.join(args)}", output.strip())
            failed = len(traffic.failures)
            answered = ", ".join(f"v{v}: {n}" for v, n in sorted(traffic.versions.items()))
            step.note(
                f"{traffic.total} requests during the swap, {failed} failed; answered by {answered}"
            )
            if "2" in traffic.first_seen:
                after = traffic.first_seen["2"] - deployed
                step.note(f"{agent.device} answered with v2 {after:.2f} s after the deploy "
                          f"command; versions switched {traffic.switches} time(s)")  # fmt: skip
            for each in self.agents:
                step.note(f"{each.device} serves {MODEL} v{each.serving()}")
            behind = [each for each in self.agents if each.serving() != "2"]
            if behind:  # rolled back by its probation, say: the device says why
                why = "; ".join(f"{each.device}: {each.update_status()}" for each in behind)
                raise StepError(f"not every device kept v2: {why}")
            if failed:
                examples = "; ".join(traffic.failures[:3])
                raise StepError(f"{failed} request(s) failed during the swap: {examples}")

    def devices_list(self) -> None:
        with self.step(15, "Ask the registry what the fleet runs: devices list") as step:

            def reported() -> bool:
                devices = self.cli_json("devices", "list", *self.home_args())["devices"]
                return all(
                    (d["models"].get(MODEL) or {}).get("active") == 2 for d in devices
                ) and len(devices) == len(self.agents)

            try:
                wait_until("both devices to report v2 as active", reported, 30, self._watch())
            except StepError as e:
                step.note(f"note: {e}; showing the list as it is")
            for args in (("devices", "list"), ("versions", MODEL)):
                output = self.cli(*args, *self.home_args())
                step.note(f"$ model-registry {shlex.join((*args, *self.home_args()))}")
                step.note(output.rstrip())
                if "probation" in output:
                    step.note(
                        "(PHASE probation: the agent commits a new version after 20 requests or "
                        "30 s without errors, and rolls back on its own otherwise)"
                    )

    def keep_up(self) -> None:
        """`--keep`: everything stays up until Ctrl-C, with a token to look at the dashboard."""
        viewer = self.cli_json("token", "create", "--role", "viewer", "--name", "demo-dashboard",
                               *self.home_args())  # fmt: skip
        say()
        say(f"The dashboard: {self.api_url}/ui/")
        say(f"  sign in with this viewer token: {viewer['token']}")
        say("  (a publisher or admin token can deploy from it too: "
            "model-registry token create --role publisher --home registry-home)")  # fmt: skip
        say("Everything stays up until Ctrl-C.")
        try:
            while True:
                time.sleep(3600)
        except Interrupted:
            say("\nCtrl-C: shutting down")

    def shutdown(self) -> None:
        with self.step(16, "Shut down: SIGTERM the agents, then the registry") as step:
            step.note(*self.procs.stop_all())
            for tracked in (self.registry, *(a.tracked for a in self.agents)):
                if tracked is not None and tracked.process.returncode != 0:
                    raise StepError(f"{tracked.name} did not stop cleanly; see "
                                    f"{shown_path(tracked.log or Path())}")  # fmt: skip

    # ---- afterwards

    def log_problems(self) -> list[str]:
        """Error lines the processes logged although the demo went through."""
        notes = []
        for log in sorted(self.logs.glob("*.log")):
            if log.name == "commands.log":
                continue
            lines = log.read_text(errors="replace").splitlines()
            errors = [line for line in lines if " ERROR " in line or line.startswith("Traceback")]
            if errors:
                last = next((line for line in reversed(lines) if "Error" in line), errors[-1])
                notes.append(f"{shown_path(log)}: {len(errors)} error line(s), e.g. {last.strip()}")
        return notes

    def summary(self) -> None:
        """What is left, and how to keep playing."""
        work = shown_path(self.work)
        relative = os.path.relpath(BIN, self.work)
        bin_dir = relative if relative.count("..") <= 1 else str(BIN)
        api_port = self.api_url.rsplit(":", 1)[-1]
        mqtt_port = self.mqtt_url.rsplit(":", 1)[-1]
        ports = [a.port for a in self.agents]
        say()
        say(f"Done in {time.monotonic() - self.started:.1f} s; every process the demo started "
            "has stopped.")  # fmt: skip
        problems = self.log_problems()
        if problems:
            say("The demo went through, but some processes logged errors:")
            for note in problems:
                say(f"  {note}")
        say()
        say(f"Left in {work}/ (yours to keep; the next `make demo` starts it afresh):")
        for name, what in LEFT_BEHIND:
            say(f"  {name:<24}{what}")
        say()
        say(f"Keep playing (the registry home is {self.home}):")
        say(f"  cd {work} && source {bin_dir}/activate")
        say(f"  model-registry serve --home registry-home --listen {HOST}:{api_port} "
            f"--embedded-broker {HOST}:{mqtt_port} >logs/registry.log 2>&1 &")  # fmt: skip
        say(f"      # the same MQTT port: the device bundles point at mqtt://{HOST}:{mqtt_port}")
        for agent in self.agents:
            say(f"  edge-agent run --config devices/{agent.device}/device.toml "
                f"--listen {HOST}:{agent.port} >logs/{agent.device}.log 2>&1 &")  # fmt: skip
        say("  model-registry devices list --home registry-home")
        say(f"  model-registry versions {MODEL} --home registry-home")
        say(f"  model-registry rollback {MODEL} --group {GROUP} --home registry-home")
        row = json.dumps({"instances": [self.sample_row]})
        say(f"  curl -s http://{HOST}:{ports[0]}/v2/models/{MODEL}")
        say(f"  curl -s http://{HOST}:{ports[0]}/v1/models/{MODEL}:predict "
            f"-H 'Content-Type: application/json' -d '{row}'")  # fmt: skip
        say(f"  curl -s http://{HOST}:{ports[1]}/metrics")
        say("  kill %1 %2 %3    # stop them again (agents serve the installed v2 even without "
            "the registry)")  # fmt: skip


def answers(agent: Agent, path: str, status: int) -> Callable[[], bool]:
    """A check: GET path on the agent answers `status`."""
    return lambda: agent.status(path) == status


def serves(agent: Agent, version: str) -> Callable[[], bool]:
    """A check: the agent serves `version` of MODEL."""
    return lambda: agent.serving() == version


def _failure(demo: Demo, error: BaseException, out: TextIO) -> None:
    step = demo.current
    where = f"at step {step.number} ({step.title})" if step else "before the first step"
    print(f"\nThe demo FAILED {where}:\n  {error}", file=out, flush=True)
    if step is not None and demo.logs.exists():
        print(f"Logs of every process: {shown_path(demo.logs)}/ (commands.log holds every "
              "command with its output)", file=out, flush=True)  # fmt: skip
        for tracked in (demo.registry, *(a.tracked for a in demo.agents)):
            if tracked is not None and tracked.log is not None and tracked.log.exists():
                tail = tracked.log.read_text(errors="replace").splitlines()[-6:]
                print(f"--- last lines of {shown_path(tracked.log)}", file=out)
                for line in tail:
                    print(f"  {line}", file=out)
        out.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 on success, 1 when a step failed, 128+N on signal N."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dir", type=Path, default=Path("demo-work"),
        help="working directory, removed and recreated at start (default: ./demo-work)",
    )  # fmt: skip
    parser.add_argument(
        "--keep", action="store_true",
        help="keep the registry and agents up at the end, until Ctrl-C, to look at the dashboard",
    )  # fmt: skip
    args = parser.parse_args(argv)
    demo = Demo(args.dir)
    demo.keep = bool(args.keep)
    SIGNALS.install()
    say(f"edge-model-runtime demo: registry, two devices, two model versions ({STEPS} steps)")
    code = 0
    try:
        demo.run()
    except Interrupted as e:
        say(f"\nInterrupted by {e}: stopping everything the demo started")
        code = 128 + e.signum
    except StepError as e:
        _failure(demo, e, sys.stdout)
        code = 1
    except Exception as e:  # noqa: BLE001 - whatever breaks, name the step and clean up
        _failure(demo, RuntimeError(f"{type(e).__name__}: {e}"), sys.stdout)
        traceback.print_exc()
        code = 1
    finally:

        def hurry(_signum: int, _frame: FrameType | None) -> None:
            demo.procs.hurry = True

        SIGNALS.install(hurry)  # a second Ctrl-C: SIGKILL whatever is left
        leftovers = demo.procs.stop_all()
        if leftovers:
            say("Stopped: " + "; ".join(leftovers))
    if code == 0:
        demo.summary()
    return code


if __name__ == "__main__":
    sys.exit(main())
