"""The records of the closed loop (drift, experiments, rollouts) and of the history, as
`SQLStorage` methods: steps in `_drift`, `_experiments`, `_rollouts` and `_history`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import ParamSpec, TypeVar

from model_registry.storage import _catalog, _drift, _experiments, _history, _rollouts
from model_registry.storage._db import READ, SNAPSHOT, WRITE, ConstraintViolationError, Mode, Steps
from model_registry.storage.base import AssignmentUpdate, DriftRecord, ExperimentRecord
from model_registry.storage.history_records import ResourcePoint
from model_registry.storage.rollout_records import (
    RolloutDecision,
    RolloutDeployment,
    RolloutRecord,
)

_P = ParamSpec("_P")
_T = TypeVar("_T")


class LoopRecords:
    """Drift, experiment, rollout and history methods of `Storage`, run by `_run`."""

    async def _run(
        self, mode: Mode, steps: Callable[_P, Steps[_T]], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run `steps(*args)` in `mode` and return what they return (the backend's)."""
        raise NotImplementedError

    # drift and experiments

    async def add_drift_records(self, records: Sequence[DriftRecord]) -> None:
        """Store drift status changes (one transaction)."""
        await self._run(WRITE, _drift.add_records, records)

    async def drift_records(self, model: str, limit: int = 100) -> list[DriftRecord]:
        """Return a model's drift status changes, newest first."""
        return await self._run(READ, _drift.records, model, limit)

    async def drift_statuses(self, model: str) -> list[DriftRecord]:
        """Return the latest drift record of each (version, device, feature) of a model."""
        return await self._run(READ, _drift.statuses, model)

    async def prune_drift_records(self, older_than: datetime) -> int:
        """Delete drift records before `older_than`, but each key's latest; return how many."""
        return await self._run(WRITE, _drift.prune_records, older_than)

    async def add_experiment(
        self, experiment: ExperimentRecord, assignments: Sequence[AssignmentUpdate] = ()
    ) -> int:
        """Store an experiment with the assignments that start it, atomically; its new id."""
        return await self._run(WRITE, _experiments.add_experiment, experiment, assignments)

    async def get_experiment(self, experiment_id: int) -> ExperimentRecord:
        """Return one experiment; raises NotFoundError."""
        return await self._run(SNAPSHOT, _experiments.get_experiment, experiment_id)

    async def experiments(self, model: str | None = None) -> list[ExperimentRecord]:
        """Return experiments, newest first, all or of one model."""
        return await self._run(SNAPSHOT, _experiments.experiments, model)

    async def end_experiment(
        self,
        experiment_id: int,
        status: str,
        ended: datetime,
        outcome: str,
        assignments: Sequence[AssignmentUpdate] = (),
    ) -> ExperimentRecord:
        """Mark a running experiment stopped or promoted, with the assignments that end it."""
        return await self._run(
            WRITE, _experiments.end_experiment, experiment_id, status, ended, outcome, assignments
        )

    # rollouts

    async def add_rollout(self, rollout: RolloutRecord, decision: RolloutDecision) -> int:
        """Store a new rollout with its first decision; ConflictError while one is active."""
        return await self._run(WRITE, _rollouts.add_rollout, rollout, decision)

    async def get_rollout(self, rollout_id: int) -> RolloutRecord:
        """Return one rollout; raises NotFoundError."""
        return await self._run(READ, _rollouts.get_rollout, rollout_id)

    async def rollouts(
        self, model: str | None = None, *, active: bool = False
    ) -> list[RolloutRecord]:
        """Return rollouts, newest first: all or of one model, all or only the active ones."""
        return await self._run(READ, _rollouts.rollouts, model, active)

    async def update_rollout(
        self,
        rollout: RolloutRecord,
        deployments: Sequence[RolloutDeployment] = (),
        decisions: Sequence[RolloutDecision] = (),
    ) -> RolloutRecord:
        """Store a rollout's change with its deployments and decisions, if still at its step."""
        try:
            return await self._run(WRITE, _rollouts.update_rollout, rollout, deployments, decisions)
        except ConstraintViolationError as e:
            first = deployments[0].deployment if deployments else None
            if first is None:
                raise
            raise await self._run(READ, _catalog.deployment_error, e, first) from e

    async def rollout_decisions(self, rollout_id: int) -> list[RolloutDecision]:
        """Return a rollout's decisions, oldest first; raises NotFoundError."""
        return await self._run(SNAPSHOT, _rollouts.rollout_decisions, rollout_id)

    # history

    async def resource_points(
        self, since: datetime, until: datetime, device_ids: Sequence[str] | None = None
    ) -> list[ResourcePoint]:
        """Return resource points with `since <= at < until`, of some devices or all, by time."""
        return await self._run(SNAPSHOT, _history.resource_points, since, until, device_ids)

    async def replace_resource_points(
        self,
        since: datetime,
        until: datetime,
        device_ids: Sequence[str],
        points: Sequence[ResourcePoint],
    ) -> None:
        """In one transaction, delete the devices' points in [since, until) and store `points`."""
        await self._run(WRITE, _history.replace_resource_points, since, until, device_ids, points)

    async def prune_resource_points(self, older_than: datetime) -> int:
        """Delete resource points before `older_than`; return how many went."""
        return await self._run(WRITE, _history.prune_resource_points, older_than)

    async def history_mark(self, name: str) -> datetime | None:
        """Return how far the compaction `name` has got, None before its first pass."""
        return await self._run(READ, _history.history_mark, name)

    async def set_history_mark(self, name: str, done_until: datetime) -> None:
        """Record how far the compaction `name` has got."""
        await self._run(WRITE, _history.set_history_mark, name, done_until)
