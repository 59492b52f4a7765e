"""The runnable examples of the docs: found by their fence info string, run, and compared.

A fenced block whose info string has the word `example` (```` ```sh example ````,
```` ```python example ````) is runnable; `background` marks one that keeps running (a server).
A block marked `output` (```` ```json output ````, ```` ```text output ````) right after an
example shows what that example prints. docs/development.md describes the rules for writers.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
FENCE = re.compile(r"^(?P<indent> *)(?P<fence>```+|~~~+)(?P<info>.*)$")
RUN_TIMEOUT_S = 300.0
START_TIMEOUT_S = 120.0
# Variables that would point the registry's CLI somewhere else than the example's own home.
FOREIGN_ENV = ("MODEL_REGISTRY_URL", "MODEL_REGISTRY_TOKEN", "MODEL_REGISTRY_HOME")


@dataclass(frozen=True)
class Block:
    """One fenced block of a Markdown file."""

    doc: Path
    line: int  # of the opening fence, from 1
    lang: str
    flags: frozenset[str]
    text: str

    @property
    def where(self) -> str:
        """`docs/x.md:12`, for messages."""
        return f"{self.doc.parent.name}/{self.doc.name}:{self.line}"

    @property
    def runnable(self) -> bool:
        """Marked `example`."""
        return "example" in self.flags

    @property
    def is_output(self) -> bool:
        """Marked `output`: what the example before it prints."""
        return "output" in self.flags


@dataclass(frozen=True)
class Example:
    """A runnable block and the output block that follows it, if any."""

    block: Block
    output: Block | None


def blocks_of(doc: Path) -> list[Block]:
    """Every fenced block of `doc`, in order (indented ones, in lists, too)."""
    blocks = []
    lines = doc.read_text(encoding="utf-8").split("\n")
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        start, index = index + 1, index + 1
        if opening is None:
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        words = opening["info"].split()
        while index < len(lines) and lines[index].strip() != fence:
            index += 1
        body = [line[indent:] if line[:indent].isspace() else line for line in lines[start:index]]
        index += 1  # past the closing fence
        lang = words[0] if words else ""
        blocks.append(Block(doc, start, lang, frozenset(words[1:]), "\n".join(body)))
    return blocks


def examples_of(doc: Path) -> list[Example]:
    """The runnable blocks of `doc` with their outputs; a misplaced output block is an error."""
    blocks = blocks_of(doc)
    examples = []
    for position, block in enumerate(blocks):
        if block.is_output:
            before = blocks[position - 1] if position else None
            if before is None or not before.runnable or "background" in before.flags:
                raise AssertionError(f"{block.where}: an output block follows no example")
        if block.runnable:
            after = blocks[position + 1] if position + 1 < len(blocks) else None
            examples.append(Example(block, after if after and after.is_output else None))
    return examples


def substitute(text: str, placeholders: Mapping[str, str]) -> str:
    """`text` with every documented placeholder replaced by the live value."""
    for placeholder, value in placeholders.items():
        text = text.replace(placeholder, value)
    return text


# --- comparing outputs ------------------------------------------------------------------------


def json_kind(value: Any) -> str:
    """The JSON type of a parsed value; integers and fractions are both numbers."""
    if value is None or isinstance(value, bool | str | list | dict):
        return type(value).__name__
    if isinstance(value, int | float) and not (isinstance(value, float) and math.isnan(value)):
        return "number"
    return type(value).__name__


def shape_differences(shown: Any, real: Any, path: str = "$") -> list[str]:
    """Where the structure of `real` differs from the documented `shown` (values are ignored).

    Objects must have the same keys, arrays the same length, and every leaf the same JSON type.
    """
    if json_kind(shown) != json_kind(real):
        return [f"{path}: the docs show {json_kind(shown)} {shown!r}, the agent gave {real!r}"]
    if isinstance(shown, dict):
        missing, extra = sorted(set(shown) - set(real)), sorted(set(real) - set(shown))
        found = [f"{path}: the docs show keys the output lacks: {missing}"] if missing else []
        found += [f"{path}: the output has keys the docs omit: {extra}"] if extra else []
        for key in sorted(set(shown) & set(real)):
            found += shape_differences(shown[key], real[key], f"{path}.{key}")
        return found
    if isinstance(shown, list):
        if len(shown) != len(real):
            return [f"{path}: the docs show {len(shown)} items, the output has {len(real)}"]
        found = []
        for position, (one, other) in enumerate(zip(shown, real, strict=True)):
            found += shape_differences(one, other, f"{path}[{position}]")
        return found
    return []


def masked(text: str) -> list[str]:
    """Lines with hashes, numbers and runs of spaces made uniform: what may vary between runs."""
    lines = []
    for line in text.strip("\n").split("\n"):
        uniform = re.sub(r"\b[0-9a-f]{12,}\b", "<hex>", line)
        uniform = re.sub(r"\d+(\.\d+)?", "<n>", uniform)
        lines.append(re.sub(r"\s+", " ", uniform).rstrip())
    return lines


def output_differences(output: Block, stdout: str, placeholders: Mapping[str, str]) -> list[str]:
    """How what an example printed differs from the output block the docs show."""
    shown = substitute(output.text, placeholders)
    if output.lang == "json":
        try:
            real = json.loads(stdout)
        except ValueError:
            return [f"the output is not one JSON document: {stdout[:500]!r}"]
        return shape_differences(json.loads(shown), real)
    expected, actual = masked(shown), masked(stdout)
    if expected == actual:
        return []
    return [f"the docs show\n{shown}\nbut it printed\n{stdout}"]


# --- running ----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What running one example gave."""

    example: Example
    returncode: int
    stdout: str
    stderr: str
    problems: list[str] = field(default_factory=list)

    def report(self) -> str:
        """A failure report naming the block."""
        return (
            f"{self.example.block.where} ({self.example.block.lang}): "
            + "; ".join(self.problems)
            + f"\n--- ran\n{self.example.block.text}\n--- stdout\n{self.stdout}"
            + f"\n--- stderr\n{self.stderr}"
        )


@dataclass
class Runner:
    """Runs the examples of documents in one working directory, as a user's shell would."""

    cwd: Path
    placeholders: dict[str, str]
    background: list[tuple[Block, subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def env(self) -> dict[str, str]:
        """The test's environment with the project's virtualenv first on PATH."""
        env = {k: v for k, v in os.environ.items() if k not in FOREIGN_ENV}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def command(self, block: Block) -> list[str]:
        """How a block's language runs it."""
        text = substitute(block.text, self.placeholders)
        if block.lang in ("sh", "bash"):
            if "background" in block.flags:  # one command: it gets the signals, not a shell
                text = "exec " + one_command(text)
            return ["bash", "-euo", "pipefail", "-c", text]
        if block.lang == "python":
            return [sys.executable, "-c", text]
        raise AssertionError(f"{block.where}: cannot run a block of language {block.lang!r}")

    def run(self, example: Example) -> Outcome:
        """Run one example to its end (or start it, for `background`) and check its output."""
        if "background" in example.block.flags:
            return self.start(example)
        result = subprocess.run(
            self.command(example.block), cwd=self.cwd, env=self.env(),
            capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False,
        )  # fmt: skip
        outcome = Outcome(example, result.returncode, result.stdout, result.stderr)
        if result.returncode != 0:
            outcome.problems.append(f"exit code {result.returncode}")
        elif example.output is not None:
            outcome.problems += output_differences(example.output, result.stdout, self.placeholders)
        return outcome

    def start(self, example: Example) -> Outcome:
        """Start a background example; wait until every address it names accepts connections."""
        block = example.block
        log = self.cwd / f"background-{block.line}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                self.command(block), cwd=self.cwd, env=self.env(),
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.background.append((block, process, log))
        outcome = Outcome(example, 0, "", "")
        addresses = [v for k, v in self.placeholders.items() if k in block.text and ":" in v]
        deadline = time.monotonic() + START_TIMEOUT_S
        for address in addresses:
            host, port = address.rsplit(":", 1)
            while not _accepts(host, int(port)):
                if process.poll() is not None or time.monotonic() > deadline:
                    outcome.returncode = process.poll() or 0
                    outcome.stdout = log.read_text(errors="replace")
                    outcome.problems.append(f"nothing listens on {address}")
                    return outcome
                time.sleep(0.1)
        return outcome

    def stop(self) -> list[str]:
        """SIGTERM every background example (newest first); what did not stop cleanly."""
        problems = []
        for block, process, log in reversed(self.background):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            try:
                code = process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                code = process.wait()
            if code != 0:
                problems.append(f"{block.where}: exited {code}\n{log.read_text(errors='replace')}")
        self.background.clear()
        return problems


def one_command(text: str) -> str:
    """The single command of a block, without its comments and line continuations."""
    parts = []
    for line in text.split("\n"):
        if line.lstrip().startswith("#"):
            continue
        parts.append(line.split(" #")[0].rstrip().removesuffix("\\").strip())
    return " ".join(part for part in parts if part)


def _accepts(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def run_document(doc: Path, runner: Runner) -> tuple[list[Outcome], list[str]]:
    """Run every example of `doc` in order; return the outcomes and the failure reports."""
    outcomes = []
    try:
        for example in examples_of(doc):
            outcome = runner.run(example)
            outcomes.append(outcome)
            if outcome.problems and "background" in example.block.flags:
                break  # what follows needs the server that did not start
    finally:
        stopped = runner.stop()
    return outcomes, [o.report() for o in outcomes if o.problems] + stopped
