"""The storage interface the services use, and the records it stores.

Services depend on `Storage` only; `SQLiteStorage` implements it for one registry host and
`PostgresStorage` for a database server that several replicas can share. All methods are
coroutines so that blocking drivers run off the event loop inside the implementation.
Signed documents are stored as the exact bytes that were published. Datetimes passed in must be
timezone-aware (InvalidInputError otherwise) and come back in UTC. Errors are those of
`model_registry.errors`: ConflictError for duplicates, NotFoundError for unknown names.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Protocol

from model_registry.storage.history_records import HistoryStorage
from model_registry.storage.records import (
    DUPLICATE,
    ROLES,
    STORED,
    UNKNOWN_DEVICE,
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
from model_registry.storage.rollout_records import RolloutDecision, RolloutDeployment, RolloutRecord

__all__ = [
    "DUPLICATE",
    "ROLES",
    "STORED",
    "UNKNOWN_DEVICE",
    "AssignmentUpdate",
    "DeploymentRecord",
    "DeviceMessageRecord",
    "DeviceRecord",
    "DeviceReport",
    "DriftRecord",
    "ExperimentRecord",
    "ModelSummary",
    "ReleaseRecord",
    "RolloutDecision",
    "RolloutDeployment",
    "RolloutRecord",
    "Storage",
    "TokenRecord",
    "VersionPoint",
]


class Storage(HistoryStorage, Protocol):
    """Everything the registry persists, behind one async interface."""

    async def open(self) -> None:
        """Connect and apply pending schema migrations."""

    async def close(self) -> None:
        """Release connections."""

    async def acquire_duty(self, name: str) -> bool:
        """Hold or take the lease on the duty `name` (a pass that must run on one registry).

        True while this storage holds it: call before each pass. The lease lasts until
        `close`, or until this storage loses its database connection; another registry on the
        same database then gets True from its next call. With SQLite: always True.
        """

    # roots
    async def add_root(self, version: int, envelope: bytes) -> None:
        """Store root `version`; raises ConflictError if that version is stored."""

    async def roots(self) -> list[tuple[int, bytes]]:
        """Return every root as (version, envelope), oldest first."""

    # models and releases
    async def add_release(self, release: ReleaseRecord) -> None:
        """Store a release; raises ConflictError if (model, version) exists."""

    async def replace_release_envelope(
        self, model: str, version: int, envelope: bytes, expires: datetime
    ) -> None:
        """Swap in a re-signed envelope of an existing release; raises NotFoundError."""

    async def get_release(self, model: str, version: int) -> ReleaseRecord:
        """Return one release; raises NotFoundError."""

    async def releases(self, model: str) -> list[ReleaseRecord]:
        """Return a model's releases, oldest first; raises NotFoundError for unknown models."""

    async def latest_version(self, model: str) -> int:
        """Return the newest version of `model`, or 0 when it has none."""

    async def models(self) -> list[ModelSummary]:
        """Return every model, by name."""

    # devices
    async def add_device(self, device: DeviceRecord) -> None:
        """Store a new device; raises ConflictError if the id exists."""

    async def get_device(self, device_id: str) -> DeviceRecord:
        """Return one device; raises NotFoundError."""

    async def devices(self, group: str | None = None) -> list[DeviceRecord]:
        """Return devices, all or of one group, by id."""

    async def devices_by_id(self, device_ids: Sequence[str]) -> list[DeviceRecord]:
        """Return the devices with these ids (unknown ids are left out), by id."""
        ...

    async def set_assignment(
        self, device_id: str, seq: int, envelope: bytes, assigned: dict[str, dict[str, Any]]
    ) -> None:
        """Record the assignment just signed for a device; ConflictError unless its seq grows."""

    async def record_state(
        self, device_id: str, state: dict[str, Any], online: bool, seen: datetime
    ) -> None:
        """Store a device's latest state message; raises NotFoundError."""

    async def set_device_group(self, device_id: str, group: str) -> DeviceRecord:
        """Move a device to `group` and return it; raises NotFoundError."""

    async def remove_device(self, device_id: str) -> None:
        """Delete a device with its events, telemetry and deployment targets; NotFoundError."""

    # deployments
    async def add_deployment(
        self, deployment: DeploymentRecord, assignments: Sequence[AssignmentUpdate] = ()
    ) -> int:
        """Store a deployment, its targets and its devices' new assignments in one transaction.

        Returns its id (the record's is ignored). Raises NotFoundError for an unknown release or
        device, InvalidInputError for a device listed twice, ConflictError for an assignment
        whose seq does not grow; then nothing is stored.
        """

    async def get_deployment(self, deployment_id: int) -> DeploymentRecord:
        """Return one deployment; raises NotFoundError."""

    async def deployments(self, model: str | None = None) -> list[DeploymentRecord]:
        """Return deployments, newest first, all or of one model."""

    async def deployment_by_key(self, idempotency_key: str) -> DeploymentRecord | None:
        """Return the deployment made with this Idempotency-Key, or None."""

    # device messages
    async def add_event(self, device_id: str, received: datetime, body: dict[str, Any]) -> None:
        """Store one device event; raises NotFoundError for an unknown device."""

    async def events(
        self, device_id: str, limit: int = 50, since: datetime | None = None
    ) -> list[DeviceMessageRecord]:
        """Return a device's events received at or after `since`, newest first."""

    async def deployment_events(self, deployment_id: int) -> list[DeviceMessageRecord]:
        """Return the events of a deployment's targets received at or after its creation.

        Oldest first; raises NotFoundError for an unknown deployment.
        """

    async def add_telemetry(self, device_id: str, received: datetime, body: dict[str, Any]) -> None:
        """Store one telemetry report; raises NotFoundError for an unknown device."""

    async def telemetry(self, device_id: str, limit: int = 100) -> list[DeviceMessageRecord]:
        """Return a device's telemetry reports, newest first."""

    async def prune_telemetry(self, older_than: datetime) -> int:
        """Delete telemetry received before `older_than`; return how many rows went."""

    async def version_points(
        self,
        model: str,
        since: datetime,
        until: datetime | None = None,
        version: int | None = None,
        device_ids: Sequence[str] | None = None,
    ) -> list[VersionPoint]:
        """Return the model's points received in [since, until), oldest first."""
        ...

    async def device_version_points(
        self, since: datetime, until: datetime, device_ids: Sequence[str]
    ) -> list[VersionPoint]:
        """Return every model's points of these devices received in [since, until), by time."""
        ...

    async def replace_version_points(
        self,
        since: datetime,
        until: datetime,
        device_ids: Sequence[str],
        points: Sequence[VersionPoint],
    ) -> None:
        """In one transaction, delete the devices' points in [since, until) and store `points`."""
        ...

    async def prune_version_points(self, older_than: datetime) -> int:
        """Delete points received before `older_than`; return how many."""
        ...

    async def prune_messages(self, kind: str, older_than: datetime, keep_per_device: int) -> int:
        """Delete `kind` ("events", "telemetry") before `older_than`, and all but each device's
        newest `keep_per_device`; return how many rows went."""

    async def add_drift_records(self, records: Sequence[DriftRecord]) -> None:
        """Store drift status changes (one transaction)."""

    async def drift_records(self, model: str, limit: int = 100) -> list[DriftRecord]:
        """Return a model's drift status changes, newest first."""
        ...

    async def drift_statuses(self, model: str) -> list[DriftRecord]:
        """Return the latest drift record of each (version, device, feature) of a model."""
        ...

    async def prune_drift_records(self, older_than: datetime) -> int:
        """Delete drift records before `older_than`, but each key's latest; return how many."""
        ...

    async def add_device_reports(self, reports: Sequence[DeviceReport]) -> list[str]:
        """Apply reports in order, in one transaction; return each one's outcome.

        Outcomes are STORED, DUPLICATE or UNKNOWN_DEVICE (never provisioned: nothing stored).
        """

    # rollouts
    async def add_rollout(self, rollout: RolloutRecord, decision: RolloutDecision) -> int:
        """Store a new rollout (step 0) with its first decision; return its id.

        ConflictError while another rollout of the model to the group is active; NotFoundError
        for an unknown release.
        """

    async def get_rollout(self, rollout_id: int) -> RolloutRecord:
        """Return one rollout; raises NotFoundError."""

    async def rollouts(
        self, model: str | None = None, *, active: bool = False
    ) -> list[RolloutRecord]:
        """Return rollouts, newest first: all or of one model, all or only the active ones."""

    async def update_rollout(
        self,
        rollout: RolloutRecord,
        deployments: Sequence[RolloutDeployment] = (),
        decisions: Sequence[RolloutDecision] = (),
    ) -> RolloutRecord:
        """Store `rollout` with its deployments and decisions in one transaction; return it.

        Only when the stored rollout is still at `rollout.step` (it is stored at step + 1, and
        each deployment's id goes into its wave); ConflictError otherwise, and for a deployment
        `add_deployment` would refuse: then nothing is stored.
        """

    async def rollout_decisions(self, rollout_id: int) -> list[RolloutDecision]:
        """Return a rollout's decisions, oldest first; raises NotFoundError."""

    # experiments
    async def add_experiment(
        self, experiment: ExperimentRecord, assignments: Sequence[AssignmentUpdate] = ()
    ) -> int:
        """Store an experiment with the assignments that start it, atomically; its new id."""

    async def get_experiment(self, experiment_id: int) -> ExperimentRecord:
        """Return one experiment; raises NotFoundError."""

    async def set_assignments(self, assignments: Sequence[AssignmentUpdate]) -> None:
        """Store many devices' new assignments in one transaction: all of them or none."""

    async def experiments(self, model: str | None = None) -> list[ExperimentRecord]:
        """Return experiments, newest first, all or of one model."""

    async def end_experiment(
        self,
        experiment_id: int,
        status: str,
        ended: datetime,
        outcome: str,
        assignments: Sequence[AssignmentUpdate] = (),
    ) -> ExperimentRecord:
        """Mark a running experiment stopped or promoted, with the assignments that end it,
        atomically; ConflictError when it is not running any more."""

    # tokens
    async def add_token(self, name: str, role: str, token_hash: str, created: datetime) -> int:
        """Store a token hash and return its id; ConflictError if the hash is stored."""

    async def find_token(self, token_hash: str) -> TokenRecord | None:
        """Return the token with this hash, or None."""

    async def tokens(self) -> list[TokenRecord]:
        """Return every token, by id."""

    async def touch_token(self, token_id: int, used: datetime) -> None:
        """Record that the token was used at `used` (nothing happens for an unknown id)."""

    async def remove_token(self, token_id: int) -> TokenRecord:
        """Delete a token and return it; NotFoundError, or ConflictError for the last admin."""
