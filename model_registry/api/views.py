"""JSON views of stored records, shared by every endpoint that returns them."""

from __future__ import annotations

from typing import Any

from edge_protocol import Envelope, Release, format_time
from model_registry.storage import DeploymentRecord, DeviceRecord, ModelSummary, ReleaseRecord


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


def device_view(device: DeviceRecord) -> dict[str, Any]:
    """A device with assigned versus active versions per model."""
    state = device.state or {}
    reported: dict[str, Any] = state.get("models") or {}
    models = {}
    for name in sorted({*device.assigned, *reported}):
        status = reported.get(name) or {}
        active = status.get("active") or {}
        models[name] = {
            "assigned": (device.assigned.get(name) or {}).get("version"),
            "active": active.get("version"),
            "phase": status.get("phase"),
            "last_error": status.get("last_error"),
        }
    return {
        "device_id": device.device_id,
        "group": device.group,
        "online": device.online,
        "last_seen": format_time(device.last_seen) if device.last_seen else None,
        "created": format_time(device.created),
        "assignment_seq": device.assignment_seq,
        "agent_version": state.get("agent_version"),
        "trust": state.get("trust"),
        "models": models,
    }


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
    }
