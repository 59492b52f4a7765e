"""Endpoints for staged rollouts (docs/registry.md, "Rollouts")."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from edge_protocol import format_time
from model_registry.api.auth import CTX_KEY, PRINCIPAL_KEY, require
from model_registry.api.params import field, int_param, json_body, positive_field, query_text
from model_registry.errors import InvalidInputError
from model_registry.rollouts import service
from model_registry.rollouts.policy import parse_policy
from model_registry.rollouts.service import RolloutStatus, WaveStatus
from model_registry.services.deployments import Target
from model_registry.services.experiment_guard import make_way
from model_registry.storage import RolloutDecision, RolloutRecord


@require("publisher")
async def create_rollout(request: web.Request) -> web.Response:
    """POST /v1/rollouts {"model", "version", "group", "policy"?}: 201 with the rollout."""
    body = await json_body(request, ("model", "version", "group", "policy", "force"))
    model, version, group = (
        field(body, "model", str), positive_field(body, "version"), field(body, "group", str)
    )  # fmt: skip
    policy = parse_policy(body.get("policy", {}), where="field 'policy'")
    ctx = request.app[CTX_KEY]
    force = bool(field(body, "force", bool, required=False))
    await make_way(ctx, model, Target(group=group), force=force, actor=request[PRINCIPAL_KEY],
                   action="rollout")  # fmt: skip
    rollout = await service.start_rollout(
        ctx, model, version, group, policy, created_by=request[PRINCIPAL_KEY]
    )
    status = await service.rollout_status(ctx, rollout.rollout_id)
    return web.json_response(status_view(status), status=201)


@require("viewer")
async def list_rollouts(request: web.Request) -> web.Response:
    """GET /v1/rollouts[?model=NAME][&active=true]: newest first."""
    storage = request.app[CTX_KEY].storage
    model = query_text(request, "model")
    active = query_text(request, "active")
    if active not in (None, "true", "false"):
        raise InvalidInputError("query parameter 'active' must be true or false")
    records = await storage.rollouts(model, active=active == "true")
    if model is not None and not records:
        await storage.releases(model)  # a model that does not exist is a 404 naming close ones
    return web.json_response({"rollouts": [rollout_view(r) for r in records]})


@require("viewer")
async def get_rollout(request: web.Request) -> web.Response:
    """GET /v1/rollouts/{id}: the rollout, each wave's progress and every decision."""
    rollout_id = int_param(request.match_info["id"], "rollout id")
    status = await service.rollout_status(request.app[CTX_KEY], rollout_id)
    return web.json_response(status_view(status))


@require("publisher")
async def pause_rollout(request: web.Request) -> web.Response:
    """POST /v1/rollouts/{id}/pause."""
    return await _act(request, service.pause)


@require("publisher")
async def resume_rollout(request: web.Request) -> web.Response:
    """POST /v1/rollouts/{id}/resume."""
    return await _act(request, service.resume)


@require("publisher")
async def abort_rollout(request: web.Request) -> web.Response:
    """POST /v1/rollouts/{id}/abort."""
    return await _act(request, service.abort)


async def _act(request: web.Request, action: Any) -> web.Response:
    rollout_id = int_param(request.match_info["id"], "rollout id")
    ctx = request.app[CTX_KEY]
    await action(ctx, rollout_id, request[PRINCIPAL_KEY])
    return web.json_response(status_view(await service.rollout_status(ctx, rollout_id)))


def rollout_view(rollout: RolloutRecord) -> dict[str, Any]:
    """A rollout in listings: what, where, how far and why it stopped."""
    passed = sum(1 for w in rollout.waves if w.passed is not None)
    return {
        "id": rollout.rollout_id,
        "model": rollout.model,
        "version": rollout.version,
        "group": rollout.group,
        "state": rollout.state,
        "wave": len(rollout.waves),
        "waves_passed": passed,
        "devices_moved": len(rollout.previous),
        "created": format_time(rollout.created),
        "created_by": rollout.created_by,
        "updated": format_time(rollout.updated),
        "halt": rollout.halt,
    }


def status_view(status: RolloutStatus) -> dict[str, Any]:
    """A rollout with its policy, every wave (started and planned) and its decisions."""
    return {
        **rollout_view(status.rollout),
        "policy": status.policy.to_dict(),
        "waves": [_wave_view(w) for w in status.waves],
        "gates": [v.numbers() for v in status.gates],
        "decisions": [decision_view(d) for d in status.decisions],
    }


def _wave_view(wave: WaveStatus) -> dict[str, Any]:
    started = wave.wave

    def moment(name: str) -> str | None:
        value = getattr(started, name) if started is not None else None
        return None if value is None else format_time(value)

    if started is None:
        state = "planned"
    elif started.passed is not None:
        state = "passed"
    elif started.settled is not None:
        state = "soaking"
    else:
        state = "moving"
    return {
        "index": wave.index + 1,
        "percent": wave.percent,
        "state": state,
        "devices": list(wave.devices),
        "deployment": None if started is None else started.deployment_id,
        "rollbacks": [] if started is None else list(started.rollbacks),
        "started": moment("started"),
        "settled": moment("settled"),
        "passed": moment("passed"),
        "counts": wave.counts,
        "activated": wave.activated,
    }


def decision_view(decision: RolloutDecision) -> dict[str, Any]:
    """One audit record: when, who, what, why, on which numbers."""
    return {
        "at": format_time(decision.at),
        "actor": decision.actor,
        "action": decision.action,
        "reason": decision.reason,
        "numbers": decision.numbers,
    }
