"""The records `Storage` stores and returns (the interface itself: `base`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from model_registry.storage.history_records import ResourcePoint

ROLES = ("viewer", "publisher", "admin")
# What `Storage.add_device_reports` did with each report.
STORED, DUPLICATE, UNKNOWN_DEVICE = "stored", "duplicate", "unknown_device"


@dataclass(frozen=True)
class ReleaseRecord:
    """One signed release of one model."""

    model: str
    version: int
    label: str
    sha256: str
    size: int
    created: datetime
    expires: datetime
    envelope: bytes  # the signed release exactly as published
    build: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelSummary:
    """A model and its newest version."""

    name: str
    latest_version: int
    releases: int
    created: datetime


@dataclass(frozen=True)
class DeviceRecord:
    """A provisioned device, what it is assigned and what it last reported."""

    device_id: str
    group: str
    created: datetime
    password_hash: str  # PBKDF2 hash of the device's MQTT password; the password is never stored
    assignment_seq: int = 0
    assignment: bytes | None = None  # the signed assignment last published for the device
    assigned: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> pinned entry
    online: bool = False
    last_seen: datetime | None = None
    state: dict[str, Any] | None = None  # the device's last online `state` message
    last_error: dict[str, Any] | None = None  # its last rejected, failed or rolled_back event


@dataclass(frozen=True)
class DeploymentRecord:
    """One deploy or rollback: a release sent to a set of devices at a time."""

    deployment_id: int
    model: str
    version: int
    target_kind: str  # "group" or "devices"
    target: str  # the group name, or the device ids joined by ","
    device_ids: tuple[str, ...]
    created: datetime
    deadline: datetime
    created_by: str
    kind: str = "deploy"  # or "rollback"
    idempotency_key: str | None = None  # the client's Idempotency-Key, unique when set
    request_digest: str | None = None  # what that request asked for (a replay must match)


@dataclass(frozen=True)
class ExperimentRecord:
    """An experiment: a control and a candidate release of one model on a set of devices."""

    experiment_id: int
    name: str
    model: str
    mode: str  # "split" (the candidate is the treatment) or "shadow"
    control: int
    candidate: int
    split_percent: int  # of the requests the treatment answers; 0 for a shadow
    target_kind: str  # "group" or "devices"
    target: str
    device_ids: tuple[str, ...]
    created: datetime
    created_by: str
    status: str = "running"  # "running", "stopped" or "promoted"
    ended: datetime | None = None
    outcome: str | None = None  # what ended it, in words ("control v1 kept")


@dataclass(frozen=True)
class AssignmentUpdate:
    """A device's newly signed assignment, to store as it is published."""

    device_id: str
    seq: int  # must be above the device's stored seq
    envelope: bytes  # the signed assignment exactly as published
    assigned: dict[str, dict[str, Any]]  # model -> pinned entry, as `DeviceRecord.assigned`


@dataclass(frozen=True)
class TokenRecord:
    """An API token; only its SHA-256 is stored."""

    token_id: int
    name: str
    role: str
    created: datetime
    last_used: datetime | None = None  # kept to the minute (model_registry/api/auth.py)


@dataclass(frozen=True)
class DeviceMessageRecord:
    """A stored device event or telemetry report."""

    device_id: str
    received: datetime
    body: dict[str, Any]


@dataclass(frozen=True)
class VersionPoint:
    """One telemetry report's numbers for one (model, version) of one device.

    Rollouts, drift, experiments and the dashboard read these (`model_registry.statistics`).
    `detail` holds every other field of the report's `models.{m}.versions.{v}` object, as sent
    (predicted classes, bin counts, experiment outcomes): counts only, so points merge by
    summing (`statistics.counts.merge_counts`).
    """

    model: str
    version: int
    device_id: str
    at: datetime  # when the registry received the report
    interval_s: float
    requests: int
    ok: int  # 2xx
    client_errors: int  # 4xx
    server_errors: int  # 5xx
    rejected: int  # the 503s among the 5xx
    latency_samples: int = 0
    latency_p50_ms: float | None = None
    latency_p99_ms: float | None = None
    latency_max_ms: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    reports: int = 1  # how many reports the point sums: more once the history duty merged it


@dataclass(frozen=True)
class DriftRecord:
    """A change of the drift status of one feature of a model version (docs/registry.md).

    `kind` is "drift_alert" when the status rose (ok < warn < alert) and "drift_cleared" when it
    fell; `device_id` None is the fleet-wide status. The numbers are those of the window that
    changed it.
    """

    model: str
    version: int
    device_id: str | None
    feature: str  # "X[3]" (input X, column 3) or "predictions"
    kind: str
    status: str
    previous: str
    at: datetime
    psi: float | None
    max_cdf_gap: float | None
    samples: int
    record_id: int = 0  # given by the storage


@dataclass(frozen=True)
class DeviceReport:
    """One checked device message for `Storage.add_device_reports`.

    The ingest decides what a message means; storage only applies it:
    * kind "state", `online` True: becomes the device's state; the device is online.
    * kind "state", `online` False (the broker's will): the device is offline; its last online
      state and `last_seen` stay, since the device itself said nothing.
    * kind "events" or "telemetry": appended. With `msg_epoch` and `msg_seq`, the report is
      stored once per (`device_id`, `msg_epoch`, `msg_seq`): a resend is a DUPLICATE.
    * every stored report but the will sets `last_seen` to `received`; `error` (events only)
      becomes the device's `last_error`.
    """

    device_id: str
    kind: str  # "state", "events" or "telemetry"
    received: datetime
    body: dict[str, Any]
    online: bool = True
    msg_epoch: str | None = None  # names the device's sequence (docs/telemetry.md section 2)
    msg_seq: int | None = None
    error: dict[str, Any] | None = None
    # Telemetry only: stored with the report, so a resend (DUPLICATE) adds none.
    points: tuple[VersionPoint, ...] = ()
    resources: ResourcePoint | None = None  # telemetry only: stored with it, exactly once
