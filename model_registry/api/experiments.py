"""Endpoints for experiments (docs/registry.md, "Experiments")."""

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
from model_registry.api.rollouts import rollout_view
from model_registry.api.views import deployment_view
from model_registry.errors import InvalidInputError
from model_registry.services import experiments
from model_registry.storage import ExperimentRecord

_START_FIELDS = ("model", "control", "treatment", "shadow", "split", "name", "group", "devices")


@require("publisher")
async def start_experiment(request: web.Request) -> web.Response:
    """POST /v1/experiments {"model", "control", "treatment" + "split" | "shadow", target}."""
    body = await json_body(request, _START_FIELDS)
    if ("treatment" in body) == ("shadow" in body):
        raise InvalidInputError("give exactly one of 'treatment' (with 'split') and 'shadow'")
    mode = "split" if "treatment" in body else "shadow"
    if mode == "split" and "split" not in body:
        raise InvalidInputError(
            "field 'split' is required with 'treatment': the percent it answers"
        )
    plan = experiments.Plan(
        model=field(body, "model", str),
        control=positive_field(body, "control"),
        candidate=positive_field(body, "treatment" if mode == "split" else "shadow"),
        mode=mode,
        split_percent=field(body, "split", int, required=False) or 0,
        name=field(body, "name", str, required=False),
    )
    record = await experiments.start(
        request.app[CTX_KEY], plan, target_from(body), created_by=request[PRINCIPAL_KEY]
    )
    return web.json_response(experiment_view(record), status=201)


@require("viewer")
async def list_experiments(request: web.Request) -> web.Response:
    """GET /v1/experiments[?model=NAME], newest first."""
    records = await request.app[CTX_KEY].storage.experiments(query_text(request, "model"))
    return web.json_response({"experiments": [experiment_view(r) for r in records]})


@require("viewer")
async def get_experiment(request: web.Request) -> web.Response:
    """GET /v1/experiments/{id}: the experiment and its verdict so far."""
    experiment_id = int_param(request.match_info["id"], "experiment id")
    record, verdict = await experiments.status(request.app[CTX_KEY], experiment_id)
    return web.json_response({**experiment_view(record), "verdict": verdict.to_dict()})


@require("publisher")
async def promote_experiment(request: web.Request) -> web.Response:
    """POST /v1/experiments/{id}/promote: a staged rollout of the winner; 409 without one."""
    experiment_id = int_param(request.match_info["id"], "experiment id")
    record, deployment, rollout = await experiments.promote(
        request.app[CTX_KEY], experiment_id, promoted_by=request[PRINCIPAL_KEY]
    )
    return web.json_response({
        **experiment_view(record),
        "rollout": None if rollout is None else rollout_view(rollout),
        "deployment": None if deployment is None else deployment_view(deployment),
    })  # fmt: skip


@require("publisher")
async def stop_experiment(request: web.Request) -> web.Response:
    """POST /v1/experiments/{id}/stop: every device back to the control alone."""
    experiment_id = int_param(request.match_info["id"], "experiment id")
    record = await experiments.stop(
        request.app[CTX_KEY], experiment_id, stopped_by=request[PRINCIPAL_KEY]
    )
    return web.json_response(experiment_view(record))


def experiment_view(e: ExperimentRecord) -> dict[str, Any]:
    """An experiment record."""
    return {
        "id": e.experiment_id,
        "name": e.name,
        "model": e.model,
        "mode": e.mode,
        "control": e.control,
        "treatment" if e.mode == "split" else "shadow": e.candidate,
        "split": e.split_percent if e.mode == "split" else None,
        "target": {e.target_kind: e.target},
        "devices": list(e.device_ids),
        "created": format_time(e.created),
        "created_by": e.created_by,
        "status": e.status,
        "ended": None if e.ended is None else format_time(e.ended),
        "outcome": e.outcome,
    }
