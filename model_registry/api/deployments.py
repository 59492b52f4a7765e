"""Endpoints for deployments."""

from __future__ import annotations

from aiohttp import web

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
from model_registry.services.deployments import RequestKey, Target, deploy_once
from model_registry.services.fleet import deployment_progress
from model_registry.storage import DeploymentRecord

IDEMPOTENCY_HEADER = "Idempotency-Key"


@require("publisher")
async def create_deployment(request: web.Request) -> web.Response:
    """POST /v1/deployments {"model", "version", "group" | "devices"} [Idempotency-Key]."""
    body = await json_body(request, ("model", "version", "group", "devices"))
    model, version, target = (
        field(body, "model", str),
        positive_field(body, "version"),
        target_from(body),
    )
    key = request_key(request, kind="deploy", model=model, version=version, target=target)
    deployment, replayed = await deploy_once(
        request.app[CTX_KEY], model, version, target, created_by=request[PRINCIPAL_KEY], key=key
    )
    return deployment_response(deployment, replayed=replayed)


def request_key(request: web.Request, *, target: Target, **fields: object) -> RequestKey | None:
    """The request's Idempotency-Key with the digest of what it asks for, or None without one."""
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    return RequestKey.of(key, **fields, target={target.kind: target.label})


def deployment_response(deployment: DeploymentRecord, *, replayed: bool) -> web.Response:
    """201 with a new deployment; 200 and `Idempotent-Replayed: true` with an earlier one."""
    response = web.json_response(deployment_view(deployment), status=200 if replayed else 201)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


@require("viewer")
async def list_deployments(request: web.Request) -> web.Response:
    """GET /v1/deployments[?model=NAME]."""
    records = await request.app[CTX_KEY].storage.deployments(query_text(request, "model"))
    return web.json_response({"deployments": [deployment_view(d) for d in records]})


@require("viewer")
async def get_deployment(request: web.Request) -> web.Response:
    """GET /v1/deployments/{id}: the deployment and where each of its devices stands."""
    deployment_id = int_param(request.match_info["id"], "deployment id")
    progress = await deployment_progress(request.app[CTX_KEY], deployment_id)
    return web.json_response(progress_view(progress, request.app[CTX_KEY].clock()))
