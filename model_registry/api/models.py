"""Endpoints for models and their versions."""

from __future__ import annotations

from dataclasses import replace

from aiohttp import web

from model_registry.api.auth import CTX_KEY, PRINCIPAL_KEY, require
from model_registry.api.deployments import deployment_response, request_key
from model_registry.api.params import field, int_param, json_body, target_from
from model_registry.api.uploads import read_upload
from model_registry.api.views import model_view, release_view
from model_registry.services.deployments import rollback
from model_registry.services.experiment_guard import make_way
from model_registry.services.releases import PushRequest, push_model


@require("viewer")
async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models."""
    summaries = await request.app[CTX_KEY].storage.models()
    return web.json_response({"models": [model_view(s) for s in summaries]})


@require("viewer")
async def list_versions(request: web.Request) -> web.Response:
    """GET /v1/models/{name}/versions."""
    name = request.match_info["name"]
    releases = await request.app[CTX_KEY].storage.releases(name)
    return web.json_response({"model": name, "versions": [release_view(r) for r in releases]})


@require("publisher")
async def push_version(request: web.Request) -> web.Response:
    """POST /v1/models/{name}/versions: upload an ONNX model, build and sign the next version."""
    ctx = request.app[CTX_KEY]
    api = ctx.config.api
    upload = await read_upload(
        request, api.max_upload_mb * 1024 * 1024, api.max_dataset_mb * 1024 * 1024
    )
    push = PushRequest(
        name=request.match_info["name"],
        model=upload.model,
        quantize=upload.quantize,
        eval_set=upload.eval_set,
        label=upload.label,
        accuracy_limit_points=upload.accuracy_limit_points,
        calibration=upload.calibration,
        reference=upload.reference,
        allow_duplicate=upload.allow_duplicate,
        gate=replace(upload.gate, forced_by=request[PRINCIPAL_KEY]),
    )
    record = await push_model(ctx, push)
    return web.json_response(release_view(record, detail=True), status=201)


@require("viewer")
async def get_version(request: web.Request) -> web.Response:
    """GET /v1/models/{name}/versions/{version}: metadata, build report, signed release."""
    version = int_param(request.match_info["version"], "version")
    record = await request.app[CTX_KEY].storage.get_release(request.match_info["name"], version)
    return web.json_response(release_view(record, detail=True))


@require("publisher")
async def rollback_model(request: web.Request) -> web.Response:
    """POST /v1/models/{name}/rollback with {"group": G} or {"devices": [...]}."""
    body = await json_body(request, ("group", "devices", "force"))
    model, target = request.match_info["name"], target_from(body)
    key = request_key(request, kind="rollback", model=model, target=target)
    ctx, actor = request.app[CTX_KEY], request[PRINCIPAL_KEY]
    force = bool(field(body, "force", bool, required=False))
    await make_way(ctx, model, target, force=force, actor=actor, action="rollback")
    deployment, replayed = await rollback(ctx, model, target, created_by=actor, key=key, guard=True)
    return await deployment_response(request.app[CTX_KEY], deployment, replayed=replayed)
