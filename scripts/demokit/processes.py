"""Every process the demo starts, recorded and stopped at the end."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from demokit.common import (
    BIN,
    CLI_TIMEOUT_S,
    FOREIGN_ENV,
    SIGNALS,
    STOP_TIMEOUT_S,
    StepError,
)

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
