"""`SQLStorage`: the `Storage` methods once for both backends, as steps in transactions.

Each method names the steps (`_catalog`, `_fleet`, `_tokens`) and how they run (`_db.Mode`); a
backend supplies `_run`, which drives the steps on its connection, and open, close and
`acquire_duty`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, ParamSpec, Self, TypeVar

from model_registry.errors import InvalidInputError
from model_registry.storage import (
    _catalog,
    _drift,
    _experiments,
    _fleet,
    _fleet_reads,
    _history,
    _points,
    _rollouts,
    _tokens,
)
from model_registry.storage._db import READ, SNAPSHOT, WRITE, ConstraintViolationError, Mode, Steps
from model_registry.storage.base import (
    AssignmentUpdate,
    DeploymentRecord,
    DeviceMessageRecord,
    DeviceRecord,
    DeviceReport,
    DriftRecord,
    ExperimentRecord,
    ModelSummary,
    ReleaseRecord,
    TokenRecord,
    VersionPoint,
)
from model_registry.storage.history_records import DeviceLiveness, ResourcePoint
from model_registry.storage.rollout_records import (
    RolloutDecision,
    RolloutDeployment,
    RolloutRecord,
)

PRUNE_DEVICES_PER_TRANSACTION = 100
_MESSAGE_TABLES: dict[str, _fleet.MessageTable] = {
    "events": "device_events",
    "telemetry": "telemetry",
}
_P = ParamSpec("_P")
_T = TypeVar("_T")


class SQLStorage:
    """The record methods of `Storage`; subclasses run the steps on their database."""

    async def open(self) -> None:
        """Connect and apply pending schema migrations."""
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections."""
        raise NotImplementedError

    async def acquire_duty(self, name: str) -> bool:
        """Hold or take the lease on duty `name`; False while another registry holds it."""
        raise NotImplementedError

    async def _run(
        self, mode: Mode, steps: Callable[_P, Steps[_T]], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        """Run `steps(*args)` in `mode` and return what they return."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # roots

    async def add_root(self, version: int, envelope: bytes) -> None:
        """Store root `version`; raises ConflictError if it is stored already."""
        await self._run(WRITE, _catalog.add_root, version, envelope)

    async def roots(self) -> list[tuple[int, bytes]]:
        """Return every root as (version, envelope), oldest first."""
        return await self._run(READ, _catalog.roots)

    # models and releases

    async def add_release(self, release: ReleaseRecord) -> None:
        """Store a release; raises ConflictError if (model, version) exists."""
        await self._run(WRITE, _catalog.add_release, release)

    async def replace_release_envelope(
        self, model: str, version: int, envelope: bytes, expires: datetime
    ) -> None:
        """Swap in a re-signed envelope of an existing release; raises NotFoundError."""
        await self._run(WRITE, _catalog.replace_release_envelope, model, version, envelope, expires)

    async def get_release(self, model: str, version: int) -> ReleaseRecord:
        """Return one release; raises NotFoundError."""
        return await self._run(READ, _catalog.get_release, model, version)

    async def releases(self, model: str) -> list[ReleaseRecord]:
        """Return a model's releases, oldest first; raises NotFoundError for unknown models."""
        return await self._run(READ, _catalog.releases, model)

    async def latest_version(self, model: str) -> int:
        """Return the newest version of `model`, or 0 when it has none."""
        return await self._run(READ, _catalog.latest_version, model)

    async def models(self) -> list[ModelSummary]:
        """Return every model, by name."""
        return await self._run(READ, _catalog.models)

    # devices

    async def add_device(self, device: DeviceRecord) -> None:
        """Store a new device; raises ConflictError if the id exists."""
        await self._run(WRITE, _fleet.add_device, device)

    async def get_device(self, device_id: str) -> DeviceRecord:
        """Return one device; raises NotFoundError."""
        return await self._run(READ, _fleet.get_device, device_id)

    async def devices(self, group: str | None = None) -> list[DeviceRecord]:
        """Return devices, all or of one group, by id."""
        return await self._run(READ, _fleet.devices, group)

    async def device_liveness(self) -> list[DeviceLiveness]:
        """Return every device's group and liveness columns, by id (no state is read)."""
        return await self._run(READ, _fleet_reads.device_liveness)

    async def devices_by_id(self, device_ids: Sequence[str]) -> list[DeviceRecord]:
        """Return the devices with these ids (unknown ids are left out), by id."""
        return await self._run(SNAPSHOT, _fleet_reads.devices_by_id, device_ids)

    async def set_assignment(
        self, device_id: str, seq: int, envelope: bytes, assigned: dict[str, dict[str, Any]]
    ) -> None:
        """Record a device's new assignment; raises ConflictError unless `seq` grows."""
        await self._run(WRITE, _fleet.set_assignment, device_id, seq, envelope, assigned)

    async def record_state(
        self, device_id: str, state: dict[str, Any], online: bool, seen: datetime
    ) -> None:
        """Store a device's latest state message; raises NotFoundError."""
        await self._run(WRITE, _fleet.record_state, device_id, state, online, seen)

    async def set_device_group(self, device_id: str, group: str) -> DeviceRecord:
        """Move a device to `group` and return it; raises NotFoundError."""
        return await self._run(WRITE, _fleet.set_device_group, device_id, group)

    async def remove_device(self, device_id: str) -> None:
        """Delete a device with its events, telemetry and deployment targets; NotFoundError."""
        await self._run(WRITE, _fleet.remove_device, device_id)

    # deployments

    async def add_deployment(
        self, deployment: DeploymentRecord, assignments: Sequence[AssignmentUpdate] = ()
    ) -> int:
        """Store a deployment, its targets and its assignments atomically; return its new id."""
        try:
            return await self._run(WRITE, _deploy_with_assignments, deployment, assignments)
        except ConstraintViolationError as e:
            raise await self._run(READ, _catalog.deployment_error, e, deployment) from e

    async def get_deployment(self, deployment_id: int) -> DeploymentRecord:
        """Return one deployment; raises NotFoundError."""
        return await self._run(SNAPSHOT, _catalog.get_deployment, deployment_id)

    async def deployments(self, model: str | None = None) -> list[DeploymentRecord]:
        """Return deployments, newest first, all or of one model."""
        return await self._run(SNAPSHOT, _catalog.deployments, model)

    async def deployment_by_key(self, idempotency_key: str) -> DeploymentRecord | None:
        """Return the deployment made with this Idempotency-Key, or None."""
        return await self._run(SNAPSHOT, _catalog.deployment_by_key, idempotency_key)

    # device messages

    async def add_event(self, device_id: str, received: datetime, body: dict[str, Any]) -> None:
        """Store one device event; raises NotFoundError for an unknown device."""
        await self._run(WRITE, _fleet.add_message, "device_events", device_id, received, body)

    async def events(
        self, device_id: str, limit: int = 50, since: datetime | None = None
    ) -> list[DeviceMessageRecord]:
        """Return a device's events received at or after `since`, newest first."""
        return await self._run(READ, _fleet.messages, "device_events", device_id, limit, since)

    async def deployment_events(self, deployment_id: int) -> list[DeviceMessageRecord]:
        """Return the events of a deployment's targets since its creation, oldest first."""
        return await self._run(SNAPSHOT, _fleet.deployment_events, deployment_id)

    async def add_telemetry(self, device_id: str, received: datetime, body: dict[str, Any]) -> None:
        """Store one telemetry report; raises NotFoundError for an unknown device."""
        await self._run(WRITE, _fleet.add_message, "telemetry", device_id, received, body)

    async def telemetry(self, device_id: str, limit: int = 100) -> list[DeviceMessageRecord]:
        """Return a device's telemetry reports, newest first."""
        return await self._run(READ, _fleet.messages, "telemetry", device_id, limit, None)

    async def prune_telemetry(self, older_than: datetime) -> int:
        """Delete telemetry received before `older_than`; return how many rows went."""
        return await self._run(WRITE, _fleet.prune_telemetry, older_than)

    async def version_points(
        self,
        model: str,
        since: datetime,
        until: datetime | None = None,
        version: int | None = None,
        device_ids: Sequence[str] | None = None,
    ) -> list[VersionPoint]:
        """Return the model's points received in [since, until), oldest first."""
        return await self._run(
            SNAPSHOT, _points.version_points, model, since, until, version, device_ids
        )

    async def device_version_points(
        self, since: datetime, until: datetime, device_ids: Sequence[str]
    ) -> list[VersionPoint]:
        """Return every model's points of these devices received in [since, until), by time."""
        return await self._run(SNAPSHOT, _points.device_points, since, until, device_ids)

    async def replace_version_points(
        self,
        since: datetime,
        until: datetime,
        device_ids: Sequence[str],
        points: Sequence[VersionPoint],
    ) -> None:
        """In one transaction, delete the devices' points in [since, until) and store `points`."""
        await self._run(WRITE, _points.replace_points, since, until, device_ids, points)

    async def prune_version_points(self, older_than: datetime) -> int:
        """Delete points received before `older_than`; return how many."""
        return await self._run(WRITE, _points.prune_points, older_than)

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

    async def set_assignments(self, assignments: Sequence[AssignmentUpdate]) -> None:
        """Store many devices' new assignments in one transaction: all of them or none."""
        await self._run(WRITE, _fleet.set_assignments, assignments)

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

    async def prune_messages(self, kind: str, older_than: datetime, keep_per_device: int) -> int:
        """Delete old events or telemetry, and all but each device's newest; return the count."""
        table = _MESSAGE_TABLES.get(kind)
        if table is None:
            raise InvalidInputError(f"kind must be 'events' or 'telemetry', not {kind!r}")
        devices = await self._run(READ, _fleet.device_ids)
        deleted = 0
        # A transaction per slice of devices, so the ingest's writes get their turn in between.
        for start in range(0, len(devices), PRUNE_DEVICES_PER_TRANSACTION):
            chunk = devices[start : start + PRUNE_DEVICES_PER_TRANSACTION]
            deleted += await self._run(
                WRITE, _fleet.prune_messages, table, chunk, older_than, keep_per_device
            )
        return deleted

    async def add_device_reports(self, reports: Sequence[DeviceReport]) -> list[str]:
        """Apply reports in order, in one transaction; return each one's outcome."""
        return await self._run(WRITE, _fleet.add_reports, reports)

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

    # tokens

    async def add_token(self, name: str, role: str, token_hash: str, created: datetime) -> int:
        """Store a token hash and return its id; raises ConflictError for a stored hash."""
        return await self._run(WRITE, _tokens.add_token, name, role, token_hash, created)

    async def find_token(self, token_hash: str) -> TokenRecord | None:
        """Return the token with this hash, or None."""
        return await self._run(READ, _tokens.find_token, token_hash)

    async def tokens(self) -> list[TokenRecord]:
        """Return every token, by id."""
        return await self._run(READ, _tokens.tokens)

    async def touch_token(self, token_id: int, used: datetime) -> None:
        """Record that the token was used at `used`."""
        await self._run(WRITE, _tokens.touch_token, token_id, used)

    async def remove_token(self, token_id: int) -> TokenRecord:
        """Delete a token and return it; NotFoundError, or ConflictError for the last admin."""
        return await self._run(WRITE, _tokens.remove_token, token_id)


def _deploy_with_assignments(
    deployment: DeploymentRecord, assignments: Sequence[AssignmentUpdate]
) -> Steps[int]:
    deployment_id = yield from _catalog.add_deployment(deployment)
    yield from _fleet.set_assignments(assignments)
    return deployment_id
