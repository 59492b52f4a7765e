"""HTTP handlers: parse the request, call the DataPlane, serialize the answer. Nothing more.

docs/openapi-agent.json documents every route registered here (a test holds them equal).
"""

from __future__ import annotations

from aiohttp import hdrs, web

from edge_agent.metrics import AgentMetrics
from edge_agent.server.body import read_body
from edge_agent.server.dataplane import DataPlane
from edge_agent.server.inference import COMPRESS_BYTES, infer_exchange, off_loop
from edge_agent.server.middleware import MODEL_VERSION
from edge_agent.server.oip import HEADER_LENGTH, ROUTING_HEADER, parse_json, routing_key
from edge_agent.server.settings import ServerConfig
from edge_common.prometheus import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE

DATAPLANE = web.AppKey("dataplane", DataPlane)
CONFIG = web.AppKey("config", ServerConfig)
METRICS = web.AppKey("metrics", AgentMetrics)


def _version(request: web.Request) -> str | None:
    return request.match_info.get("version")


async def server_live(request: web.Request) -> web.Response:
    """OIP server live: 200 while the process answers."""
    return web.Response(status=200)


async def server_ready(request: web.Request) -> web.Response:
    """OIP server ready: 200 when serving a model and not draining, else 400 (OIP: 4xx)."""
    return web.Response(status=200 if request.app[DATAPLANE].is_ready() else 400)


async def server_metadata(request: web.Request) -> web.Response:
    """OIP server metadata."""
    return web.json_response(request.app[DATAPLANE].server_metadata())


async def model_metadata(request: web.Request) -> web.Response:
    """OIP model metadata."""
    dataplane = request.app[DATAPLANE]
    return web.json_response(
        dataplane.model_metadata(request.match_info["model"], _version(request))
    )


async def model_ready(request: web.Request) -> web.Response:
    """OIP model ready: 200, 400 while draining, 404 for an unknown model or version."""
    ready = request.app[DATAPLANE].model_ready(request.match_info["model"], _version(request))
    return web.Response(status=200 if ready else 400)


async def model_config(request: web.Request) -> web.Response:
    """Triton's model configuration extension: the served model as a model config."""
    dataplane = request.app[DATAPLANE]
    return web.json_response(dataplane.model_config(request.match_info["model"], _version(request)))


async def model_stats(request: web.Request) -> web.Response:
    """Triton's statistics extension: of one model (version), or of every model served."""
    dataplane = request.app[DATAPLANE]
    name = request.match_info.get("model")
    return web.json_response(dataplane.statistics(name, _version(request)))


async def infer(request: web.Request) -> web.StreamResponse:
    """OIP inference, JSON or with the binary tensor data extension."""
    config, dataplane = request.app[CONFIG], request.app[DATAPLANE]
    async with read_body(request, config) as body:  # counts against the body budget till done
        answer = await infer_exchange(
            dataplane, request.match_info["model"], _version(request), body,
            header_length=request.headers.get(HEADER_LENGTH),
            routing=request.headers.get(ROUTING_HEADER),
        )  # fmt: skip
        request[MODEL_VERSION] = answer.model_version
    if answer.json_length is None:
        response = web.Response(body=answer.payload, content_type="application/json")
    else:
        response = web.Response(body=answer.payload, content_type="application/octet-stream")
        response.headers[HEADER_LENGTH] = str(answer.json_length)
    _maybe_compress(request, response, len(answer.payload))
    return response


def _maybe_compress(request: web.Request, response: web.Response, size: int) -> None:
    accepted = request.headers.get(hdrs.ACCEPT_ENCODING, "").lower()
    if size > COMPRESS_BYTES and ("gzip" in accepted or "deflate" in accepted):
        response.enable_compression()


async def predict(request: web.Request) -> web.Response:
    """The simple form: `{"instances": [...]}` -> `{"predictions": [...]}`."""
    config, dataplane = request.app[CONFIG], request.app[DATAPLANE]
    async with read_body(request, config) as body:  # counts against the body budget till done
        parsed = await off_loop(len(body), parse_json, body, "the request body")
        model = request.match_info["model"]
        result = await dataplane.predict(model, None, parsed, _header_key(request))
    request[MODEL_VERSION] = result["model_version"]
    return web.json_response(result)


def _header_key(request: web.Request) -> str | None:
    return routing_key(request.headers.get(ROUTING_HEADER), f"the {ROUTING_HEADER} header")


async def feedback(request: web.Request) -> web.Response:
    """The application's ground truth for answers of an experiment (batchable)."""
    config, dataplane = request.app[CONFIG], request.app[DATAPLANE]
    async with read_body(request, config) as body:
        parsed = await off_loop(len(body), parse_json, body, "the feedback")
    return web.json_response(dataplane.feedback(request.match_info["model"], parsed))


async def status(request: web.Request) -> web.Response:
    """The agent's status: models, versions, and what the status providers report."""
    return web.json_response(request.app[DATAPLANE].status())


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    text = request.app[METRICS].render()
    return web.Response(body=text.encode(), headers={hdrs.CONTENT_TYPE: PROMETHEUS_CONTENT_TYPE})


MODEL = "/v2/models/{model}"
VERSION = "/v2/models/{model}/versions/{version}"


def routes() -> list[web.RouteDef]:
    """Every route of the local inference endpoint."""
    return [
        web.get("/v2", server_metadata, name="server_metadata"),
        web.get("/v2/health/live", server_live, name="server_live"),
        web.get("/v2/health/ready", server_ready, name="server_ready"),
        web.get("/v2/models/stats", model_stats, name="stats"),  # before {model} matches it
        web.get(MODEL, model_metadata, name="model_metadata"),
        web.get(VERSION, model_metadata, name="model_version_metadata"),
        web.get(f"{MODEL}/ready", model_ready, name="model_ready"),
        web.get(f"{VERSION}/ready", model_ready, name="model_version_ready"),
        web.get(f"{MODEL}/config", model_config, name="model_config"),
        web.get(f"{VERSION}/config", model_config, name="model_version_config"),
        web.get(f"{MODEL}/stats", model_stats, name="model_stats"),
        web.get(f"{VERSION}/stats", model_stats, name="model_version_stats"),
        web.post(f"{MODEL}/infer", infer, name="infer"),
        web.post(f"{VERSION}/infer", infer, name="infer_version"),
        web.post(f"{MODEL}/feedback", feedback, name="feedback"),
        web.post("/v1/models/{model}:predict", predict, name="predict"),
        web.get("/v1/status", status, name="status"),
        web.get("/metrics", metrics, name="metrics"),
    ]
