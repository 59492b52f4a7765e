"""The records of staged rollouts (model_registry/rollouts), as `Storage` stores them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model_registry.storage.records import AssignmentUpdate, DeploymentRecord


@dataclass(frozen=True)
class RolloutWave:
    """One started wave of a rollout: the devices it moved and how far it got."""

    index: int  # 0 for the first wave
    percent: float  # the share of the group the rollout reaches with this wave (cumulative)
    devices: tuple[str, ...]  # the devices this wave moves (none of an earlier wave)
    started: datetime
    deployment_id: int | None = None  # the deployment that moved them (the storage sets it)
    settled: datetime | None = None  # enough of them activated: the soak began
    passed: datetime | None = None  # the soak ended with every gate held
    rollbacks: tuple[int, ...] = ()  # deployments that gave them their previous version back


# A rollout moves on while running; waits for `rollout resume` in waiting (--manual) or paused;
# halted, aborted and completed are final.
ROLLOUT_ACTIVE = ("running", "waiting", "paused")
ROLLOUT_STATES = (*ROLLOUT_ACTIVE, "halted", "aborted", "completed")


@dataclass(frozen=True)
class RolloutRecord:
    """A staged rollout of one release to one group, wave by wave (model_registry/rollouts)."""

    rollout_id: int
    model: str
    version: int
    group: str
    policy: dict[str, Any]  # the RolloutPolicy as JSON
    state: str  # one of ROLLOUT_STATES
    created: datetime
    created_by: str
    updated: datetime
    step: int = 0  # grows with every stored change: an update must name the step it read
    waves: tuple[RolloutWave, ...] = ()
    previous: dict[str, int | None] = field(default_factory=dict)  # device -> version before
    halt: dict[str, Any] | None = None  # why it stopped: gate, measured, limit, devices

    @property
    def active(self) -> bool:
        """Whether the rollout can still move (not halted, aborted or completed)."""
        return self.state in ROLLOUT_ACTIVE


@dataclass(frozen=True)
class RolloutDecision:
    """One audit record of a rollout: who decided what, when, why, on which numbers."""

    at: datetime
    actor: str  # a token's name, or "controller"
    action: str  # started, wave_started, wave_settled, wave_passed, halted, paused, ...
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)  # measured values and their limits
    rollout_id: int = 0  # set by the storage


@dataclass(frozen=True)
class RolloutDeployment:
    """A deployment stored with a rollout's change: a wave's move or a giving back."""

    deployment: DeploymentRecord
    assignments: Sequence[AssignmentUpdate]
    wave: int  # the wave it belongs to: a "deploy" moves it, a "rollback" gives back
