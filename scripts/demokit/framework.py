"""The demo's frame: numbered steps, the registry CLI, and the summary at the end."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demokit.common import (
    BIN,
    DEVICES,
    GROUP,
    HOST,
    INDENT,
    LEFT_BEHIND,
    MODEL,
    Interrupted,
    say,
    shown_path,
)
from demokit.devices import Agent
from demokit.processes import Processes, Tracked
from demokit.training import Data

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


class DemoFramework:
    """What every step uses: the working directories, the processes, numbered steps, the CLI."""

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
        self.number, self.total = 0, 0  # the step running, of how many (see `story`)

    # ---- framework

    @contextmanager
    def step(self, title: str) -> Iterator[Step]:
        """Print `[ n/16] title ...`, run the body, finish the line with its duration."""
        step = Step(self.number, title)
        self.current = step
        say(f"[{self.number:2d}/{self.total}] {title} ... ", end="")
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
