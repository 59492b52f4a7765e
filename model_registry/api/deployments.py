"""Endpoints for deployments."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from edge_protocol import format_time
from model_registry.api.auth import CTX_KEY, PRINCIPAL_KEY, require
from model_registry.api.params import (
    field,
    int_param,
    json_body,
    positive_field,
    query_text,
    target_from,
)
from model_registry.api.views import deployment_view, progress_view
from model_registry.services.context import RegistryContext
from model_registry.services.deployments import RequestKey, Target, deploy_once
from model_registry.services.experiment_guard import make_way
from model_registry.services.fleet import ONLINE, connection, deployment_progress
from model_registry.storage import DeploymentRecord

IDEMPOTENCY_HEADER = "Idempotency-Key"


@require("publisher")
async def create_deployment(request: web.Request) -> web.Response:
    """POST /v1/deployments {"model", "version", "group" | "devices"} [Idempotency-Key]."""
    body = await json_body(request, ("model", "version", "group", "devices", "force"))
    model, version, target = (
        field(body, "model", str),
        positive_field(body, "version"),
        target_from(body),
    )
    key = request_key(request, kind="deploy", model=model, version=version, target=target)
    ctx, actor = request.app[CTX_KEY], request[PRINCIPAL_KEY]
    force = bool(field(body, "force", bool, required=False))
    await make_way(ctx, model, target, force=force, actor=actor, action="deploy")
    deployment, replayed = await deploy_once(
        ctx, model, version, target, created_by=actor, key=key, guard=True
    )
    return await deployment_response(request.app[CTX_KEY], deployment, replayed=replayed)


def request_key(request: web.Request, *, target: Target, **fields: object) -> RequestKey | None:
    """The request's Idempotency-Key with the digest of what it asks for, or None without one."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    return RequestKey.of(key, **fields, target={target.kind: target.label})


async def deployment_response(
    ctx: RegistryContext, deployment: DeploymentRecord, *, replayed: bool
) -> web.Response:
    """201 with a new deployment; 200 and `Idempotent-Replayed: true` with an earlier one.

    Either names, in `unreachable`, the targeted devices the registry does not hear from now:
    they get their assignment only when they reconnect.
    """
    view = {**deployment_view(deployment), "unreachable": await _unreachable(ctx, deployment)}
    response = web.json_response(view, status=200 if replayed else 201)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


async def _unreachable(ctx: RegistryContext, deployment: DeploymentRecord) -> list[dict[str, Any]]:
    targeted = set(deployment.device_ids)
    devices = {d.device_id: d for d in await ctx.storage.devices() if d.device_id in targeted}
    now = ctx.clock()
    found = []
    for device in (devices[i] for i in deployment.device_ids if i in devices):
        heard = connection(device, now)
        if heard != ONLINE:
            seen = None if device.last_seen is None else format_time(device.last_seen)
            found.append({"device_id": device.device_id, "connection": heard, "last_seen": seen})
    return found


@require("viewer")
async def list_deployments(request: web.Request) -> web.Response:
    """GET /v1/deployments[?model=NAME]."""
    storage = request.app[CTX_KEY].storage
    model = query_text(request, "model")
    records = await storage.deployments(model)
    if model is not None and not records:
        await storage.releases(model)  # a model that does not exist is a 404 naming the close ones
    return web.json_response({"deployments": [deployment_view(d) for d in records]})


@require("viewer")
async def get_deployment(request: web.Request) -> web.Response:
    """GET /v1/deployments/{id}: the deployment and where each of its devices stands."""
    deployment_id = int_param(request.match_info["id"], "deployment id")
    progress = await deployment_progress(request.app[CTX_KEY], deployment_id)
    return web.json_response(progress_view(progress, request.app[CTX_KEY].clock()))
