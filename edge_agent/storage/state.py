"""The agent's durable state: trust high-water marks and, per model, what is installed.

`state.json` and the trusted root live in the state directory and are only ever replaced
atomically (temp file, fsync, rename, fsync the directory), so a `kill -9` at any instant leaves
either the old or the new state, each of which names only verified, fully written models.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edge_agent.errors import ConfigError
from edge_common.files import fsync_directory, write_atomic

STATE_FILE = "state.json"
ROOT_FILE = "trust/root.json"
# The accepted assignment whose experiments run, as signed (edge_agent/experiments/resume.py).
EXPERIMENT_ASSIGNMENT_FILE = "trust/experiment-assignment.json"
RELEASES_DIR = "releases"
STATE_SCHEMA = 1


@dataclass(frozen=True)
class Installed:
    """A release whose model file is in the store and verified."""

    version: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"version": self.version, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, data: Any) -> Installed | None:
        """Parse the JSON form (None stays None)."""
        if data is None:
            return None
        return cls(int(data["version"]), str(data["sha256"]))


@dataclass(frozen=True)
class ModelState:
    """One model on this device.

    During probation `active` is the new release and `previous` the one to fall back to;
    `probation_restarts` counts agent starts that found the probation unfinished.
    """

    active: Installed | None = None
    previous: Installed | None = None
    in_probation: bool = False
    probation_restarts: int = 0
    # The agent was stopped on purpose (SIGTERM) during probation: the next start is no crash.
    probation_clean_stop: bool = False
    # (version, sha256) -> the assignment seq at which it failed here; retried only under a
    # newer assignment.
    failed: dict[tuple[int, str], int] = field(default_factory=dict)

    def failed_at(self, release: Installed) -> int | None:
        """The assignment seq at which `release` failed on this device, if it did."""
        return self.failed.get((release.version, release.sha256))

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "active": self.active.to_dict() if self.active else None,
            "previous": self.previous.to_dict() if self.previous else None,
            "in_probation": self.in_probation,
            "probation_restarts": self.probation_restarts,
            "probation_clean_stop": self.probation_clean_stop,
            "failed": [
                {"version": v, "sha256": s, "seq": seq} for (v, s), seq in self.failed.items()
            ],
        }

    @classmethod
    def from_dict(cls, data: Any) -> ModelState:
        """Parse the JSON form."""
        return cls(
            active=Installed.from_dict(data.get("active")),
            previous=Installed.from_dict(data.get("previous")),
            in_probation=bool(data.get("in_probation", False)),
            probation_restarts=int(data.get("probation_restarts", 0)),
            probation_clean_stop=bool(data.get("probation_clean_stop", False)),
            failed={(int(f["version"]), str(f["sha256"])): int(f["seq"]) for f in data["failed"]},
        )


@dataclass(frozen=True)
class AgentState:
    """Everything the agent must remember across restarts (besides files in the store)."""

    assignment_seq: int = 0
    assignment_digest: str | None = None
    models: dict[str, ModelState] = field(default_factory=dict)

    def model(self, name: str) -> ModelState:
        """The state of `name` (empty when the device never had it)."""
        return self.models.get(name, ModelState())

    def with_model(self, name: str, state: ModelState) -> AgentState:
        """A copy with `name` set to `state`."""
        return replace(self, models={**self.models, name: state})

    def installed_shas(self) -> set[str]:
        """The sha256 of every model file the state refers to (what retention keeps)."""
        return {
            release.sha256
            for model in self.models.values()
            for release in (model.active, model.previous)
            if release is not None
        }

    def installed_releases(self) -> set[tuple[str, str]]:
        """(model, sha256) of every release the state refers to (whose signed files are kept)."""
        return {
            (name, release.sha256)
            for name, model in self.models.items()
            for release in (model.active, model.previous)
            if release is not None
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "schema": STATE_SCHEMA,
            "assignment_seq": self.assignment_seq,
            "assignment_digest": self.assignment_digest,
            "models": {name: m.to_dict() for name, m in sorted(self.models.items())},
        }

    @classmethod
    def from_dict(cls, data: Any) -> AgentState:
        """Parse the JSON form."""
        return cls(
            assignment_seq=int(data["assignment_seq"]),
            assignment_digest=data.get("assignment_digest"),
            models={name: ModelState.from_dict(m) for name, m in data["models"].items()},
        )


class StateStore:
    """Reads and atomically replaces the files of the state directory."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        for sub in ("", "trust", RELEASES_DIR):
            (state_dir / sub).mkdir(parents=True, exist_ok=True)

    def remove_debris(self) -> list[Path]:
        """Delete temp files a crash left mid-write (the real files were never touched)."""
        debris = [
            path
            for sub in ("", "trust", RELEASES_DIR)
            for path in (self.state_dir / sub).glob(".*.tmp")
        ]
        for path in debris:
            path.unlink(missing_ok=True)
        return debris

    def load(self) -> AgentState:
        """Return the saved state, or a fresh one on first start."""
        return load_state(self.state_dir)

    def save(self, state: AgentState) -> None:
        """Replace state.json durably."""
        text = json.dumps(state.to_dict(), indent=2, sort_keys=True)
        write_atomic(self.state_dir / STATE_FILE, text.encode())

    def trusted_root(self, provisioned: bytes) -> bytes:
        """The root the agent trusts now: the stored one after rotations, else the provisioned."""
        try:
            return (self.state_dir / ROOT_FILE).read_bytes()
        except FileNotFoundError:
            return provisioned

    def save_root(self, root: bytes) -> None:
        """Persist a newly accepted root."""
        write_atomic(self.state_dir / ROOT_FILE, root)

    def kept_experiment_assignment(self) -> bytes | None:
        """The signed assignment kept for the experiments it runs, or None (blocking)."""
        try:
            return (self.state_dir / EXPERIMENT_ASSIGNMENT_FILE).read_bytes()
        except FileNotFoundError:
            return None

    def keep_experiment_assignment(self, envelope: bytes | None) -> None:
        """Keep the signed assignment of the running experiments; None: there are none."""
        path = self.state_dir / EXPERIMENT_ASSIGNMENT_FILE
        if envelope is not None:
            write_atomic(path, envelope)
        elif path.exists():
            path.unlink()
            fsync_directory(path.parent)

    def release_path(self, model: str, sha256: str) -> Path:
        """Where the signed release of an installed model is kept (for offline starts)."""
        return self.state_dir / RELEASES_DIR / f"{model}-{sha256}.json"

    def save_release(self, model: str, sha256: str, envelope: bytes) -> None:
        """Keep the signed release next to the model file it describes."""
        write_atomic(self.release_path(model, sha256), envelope)

    def retain_releases(self, keep: Collection[tuple[str, str]]) -> list[Path]:
        """Delete the signed releases of every (model, sha256) not in `keep` (blocking)."""
        wanted = {self.release_path(model, sha256).name for model, sha256 in keep}
        directory = self.state_dir / RELEASES_DIR
        removed = [
            path
            for path in directory.glob("*.json")
            if path.name not in wanted and not path.name.startswith(".")
        ]
        for path in removed:
            path.unlink(missing_ok=True)
        if removed:
            fsync_directory(directory)
        return removed


def load_state(state_dir: Path) -> AgentState:
    """Read `state_dir/state.json` (a fresh state if there is none), creating nothing."""
    path = state_dir / STATE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return AgentState()
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is unreadable ({e}); move it away to start afresh") from e
    try:
        return AgentState.from_dict(data)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConfigError(f"{path} does not hold an agent state: {e}") from e
