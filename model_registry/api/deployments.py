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
from model_registry.services.deployments import deploy
from model_registry.services.fleet import deployment_progress


@require("publisher")
async def create_deployment(request: web.Request) -> web.Response:
    """POST /v1/deployments {"model", "version", "group" | "devices"}."""
    body = await json_body(request, ("model", "version", "group", "devices"))
    deployment = await deploy(
        request.app[CTX_KEY],
        field(body, "model", str),
        positive_field(body, "version"),
        target_from(body),
        created_by=request[PRINCIPAL_KEY],
    )
    return web.json_response(deployment_view(deployment), status=201)


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
