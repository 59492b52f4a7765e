"""Health, metrics, the OpenAPI document, tokens and artifact downloads."""

from __future__ import annotations

import json
import re
from importlib import resources

from aiohttp import web

from edge_common.prometheus import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
from model_registry.api.auth import CTX_KEY, require
from model_registry.api.metrics import METRICS_KEY
from model_registry.api.params import field, int_param, json_body, printable_text
from model_registry.api.views import token_view
from model_registry.errors import InvalidInputError, NotFoundError
from model_registry.tokens import check_role, generate_token, hash_token

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
MAX_NAME = 128  # of a token


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process is up and its storage answers."""
    await request.app[CTX_KEY].storage.latest_version("healthz-probe")
    return web.json_response({"status": "ok"})


async def openapi(_request: web.Request) -> web.Response:
    """GET /v1/openapi.json."""
    text = resources.files("model_registry.api").joinpath("openapi.json").read_text()
    return web.json_response(json.loads(text))


@require("viewer")
async def metrics(request: web.Request) -> web.Response:
    """GET /metrics in the Prometheus text format."""
    text = await request.app[METRICS_KEY].render(request.app[CTX_KEY])
    return web.Response(body=text.encode(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})


@require("admin")
async def create_token(request: web.Request) -> web.Response:
    """POST /v1/tokens {"role", "name"?}: the token is in this response only."""
    body = await json_body(request, ("role", "name"))
    role = check_role(field(body, "role", str))
    name = printable_text(field(body, "name", str, required=False) or role, "name", MAX_NAME)
    token = generate_token()
    ctx = request.app[CTX_KEY]
    token_id = await ctx.storage.add_token(name, role, hash_token(token), ctx.clock())
    return web.json_response(
        {"id": token_id, "name": name, "role": role, "token": token}, status=201
    )


@require("admin")
async def list_tokens(request: web.Request) -> web.Response:
    """GET /v1/tokens: every token's id, name, role and use; never the secret."""
    tokens = await request.app[CTX_KEY].storage.tokens()
    return web.json_response({"tokens": [token_view(t) for t in tokens]})


@require("admin")
async def delete_token(request: web.Request) -> web.Response:
    """DELETE /v1/tokens/{id}: the token is refused from now on (409 for the last admin one)."""
    token_id = int_param(request.match_info["id"], "token id")
    removed = await request.app[CTX_KEY].storage.remove_token(token_id)
    return web.json_response(token_view(removed))


@require("viewer", devices=True)
async def get_artifact(request: web.Request) -> web.StreamResponse:
    """GET /v1/artifacts/{sha256} with Range and ETag support."""
    sha256 = request.match_info["sha256"]
    if not _SHA256.fullmatch(sha256):
        raise InvalidInputError("an artifact is named by its sha256: 64 lowercase hex characters")
    blobs = request.app[CTX_KEY].blobs
    if not blobs.exists(sha256):
        raise NotFoundError(f"no artifact {sha256}")
    # FileResponse answers Range, If-Range and If-None-Match itself; blobs never change.
    response = web.FileResponse(blobs.path(sha256))
    response.content_type = "application/vnd.onnx"
    return response
