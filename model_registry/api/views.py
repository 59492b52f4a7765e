"""JSON views of stored records, shared by every endpoint that returns them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from edge_protocol import Envelope, Release, format_time, utc_now
from model_registry.services.fleet import (
    ONLINE,
    DeploymentProgress,
    DeviceDetail,
    DeviceProgress,
    as_dict,
    connection,
    model_reports,
    update_phase,
)
from model_registry.storage import (
    DeploymentRecord,
    DeviceMessageRecord,
    DeviceRecord,
    ModelSummary,
    ReleaseRecord,
    TokenRecord,
)


def model_view(summary: ModelSummary) -> dict[str, Any]:
    """A model in listings."""
    return {
        "name": summary.name,
        "latest_version": summary.latest_version,
        "releases": summary.releases,
        "created": format_time(summary.created),
    }


def release_view(record: ReleaseRecord, *, detail: bool = False) -> dict[str, Any]:
    """A release; with `detail`, its io schema, artifact and the signed document too."""
    view: dict[str, Any] = {
        "model": record.model,
        "version": record.version,
        "label": record.label,
        "sha256": record.sha256,
        "size": record.size,
        "created": format_time(record.created),
        "expires": format_time(record.expires),
        "build": record.build,
    }
    if detail:
        envelope = Envelope.from_bytes(record.envelope)
        release = Release.from_dict(envelope.signed)
        view["io"] = release.io.to_dict()
        view["artifact"] = release.artifact.to_dict()
        view["signed_release"] = envelope.to_dict()
    return view


def device_view(device: DeviceRecord, now: datetime | None = None) -> dict[str, Any]:
    """A device with assigned versus active versions per model, its update phase and last error.

    `online` is true only while the registry hears from it: `connection` says which of online,
    stale (silent for too long although its last state says online) or offline it is.
    """
    heard = connection(device, now or utc_now())
    state = as_dict(device.state)
    reported = model_reports(device)
    models = {}
    for name in sorted({*device.assigned, *reported}):
        status = as_dict(reported.get(name))
        models[name] = {
            "assigned": (device.assigned.get(name) or {}).get("version"),
            "active": as_dict(status.get("active")).get("version"),
            "phase": status.get("phase"),
            "last_error": status.get("last_error"),
        }
    return {
        "device_id": device.device_id,
        "group": device.group,
        "online": heard == ONLINE,
        "connection": heard,
        "last_seen": _optional_time(device.last_seen),
        "created": format_time(device.created),
        "assignment_seq": device.assignment_seq,
        "agent_version": state.get("agent_version"),
        "trust": state.get("trust"),
        "phase": update_phase(device),
        "last_error": device.last_error,
        "models": models,
    }


def device_detail_view(detail: DeviceDetail, now: datetime) -> dict[str, Any]:
    """A device, its last online state, recent events and telemetry series."""
    return {
        **device_view(detail.device, now),
        "state": detail.device.state,
        "events": [_message_view(e) for e in detail.events],
        "telemetry": [_message_view(t) for t in detail.telemetry],
    }


def _message_view(message: DeviceMessageRecord) -> dict[str, Any]:
    return {"received": format_time(message.received), "body": message.body}


def _optional_time(moment: datetime | None) -> str | None:
    return format_time(moment) if moment is not None else None


def deployment_view(deployment: DeploymentRecord) -> dict[str, Any]:
    """A deployment and its targets."""
    return {
        "id": deployment.deployment_id,
        "kind": deployment.kind,
        "model": deployment.model,
        "version": deployment.version,
        "target": {deployment.target_kind: deployment.target},
        "devices": list(deployment.device_ids),
        "created": format_time(deployment.created),
        "deadline": format_time(deployment.deadline),
        "created_by": deployment.created_by,
        "idempotency_key": deployment.idempotency_key,
    }


def progress_view(progress: DeploymentProgress, now: datetime) -> dict[str, Any]:
    """A deployment with the status of each targeted device and the counts per status."""
    return {
        **deployment_view(progress.deployment),
        "progress": {
            "done": progress.done,
            "succeeded": progress.succeeded,
            "counts": progress.counts,
            "devices": [_device_progress_view(d, now) for d in progress.devices],
        },
    }


def _device_progress_view(device: DeviceProgress, now: datetime) -> dict[str, Any]:
    heard = connection(device.device, now)
    chunks = device.chunks
    return {
        "device_id": device.device.device_id,
        "status": device.status,
        "reason": device.reason,
        "detail": device.detail,
        "phase": device.phase,
        "since": _optional_time(device.since),
        "chunks": None if chunks is None else {"done": chunks[0], "total": chunks[1]},
        "online": heard == ONLINE,
        "connection": heard,
        "last_seen": _optional_time(device.device.last_seen),
    }


def token_view(token: TokenRecord) -> dict[str, Any]:
    """An API token without its secret (which the registry does not have)."""
    return {
        "id": token.token_id,
        "name": token.name,
        "role": token.role,
        "created": format_time(token.created),
        "last_used": _optional_time(token.last_used),
    }
