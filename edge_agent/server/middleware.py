"""The aiohttp middleware: bearer token, domain errors to HTTP statuses, request metrics.

This is the only place that knows which status code a domain error becomes.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from typing import Any

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from edge_agent.errors import (
    AgentError,
    InvalidRequestError,
    ModelNotFoundError,
    ModelNotReadyError,
    OverloadedError,
    PayloadTooLargeError,
    RequestError,
    RequestTimeoutError,
    ServingError,
    ShuttingDownError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from edge_agent.metrics import UNKNOWN_MODEL, AgentMetrics
from edge_agent.runtime import ModelRepository

log = logging.getLogger(__name__)


try:  # aiohttp >= 3.12 types request storage keys; older versions take a string
    from aiohttp.web import RequestKey

    MODEL_VERSION: Any = RequestKey("model_version", str)
except ImportError:  # pragma: no cover
    MODEL_VERSION = "edge_agent.model_version"

# Most specific first: the first class in an error's MRO found here decides the status.
STATUS_BY_ERROR: dict[type[AgentError], int] = {
    InvalidRequestError: 400,
    UnauthorizedError: 401,
    RequestTimeoutError: 408,
    ModelNotFoundError: 404,
    PayloadTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
    RequestError: 400,
    ModelNotReadyError: 503,
    OverloadedError: 503,
    ShuttingDownError: 503,
    ServingError: 503,
    AgentError: 500,
}
OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})  # probes need no token
METERED_ROUTES = {"infer": "infer", "infer_version": "infer", "predict": "predict"}
CLIENT_CLOSED = 499  # nginx's code for "the client went away before the response"


def status_for(error: AgentError) -> int:
    """The HTTP status a domain error maps to."""
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return 500


def error_body(message: str) -> bytes:
    """The OIP error body, `{"error": "..."}`, for whichever reader writes the answer."""
    return json.dumps({"error": message}).encode()


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The OIP error answer of the aiohttp routes."""
    return web.Response(
        body=error_body(message), status=status, headers=headers,
        content_type="application/json", charset="utf-8",
    )  # fmt: skip


def _error_headers(error: AgentError) -> dict[str, str] | None:
    if isinstance(error, OverloadedError):
        return {hdrs.RETRY_AFTER: str(max(1, round(error.retry_after_s)))}
    if isinstance(error, UnauthorizedError):
        return {hdrs.WWW_AUTHENTICATE: 'Bearer realm="edge-agent"'}
    return None


def request_middleware(
    metrics: AgentMetrics, repository: ModelRepository, token: str | None
) -> Middleware:
    """One layer for every request: the bearer token (everywhere but the health probes),
    domain and aiohttp errors into `{"error": "..."}` responses, and for inference requests
    the count by model, answering version and final status, and the latency."""
    expected = None if token is None else token.encode()

    @web.middleware
    async def handle(request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint = METERED_ROUTES.get(request.match_info.route.name or "")
        started, status = time.perf_counter(), CLIENT_CLOSED
        try:
            response = await _answer(request, handler, expected)
            status = response.status
            return response
        finally:
            if endpoint is not None:
                record_request(
                    metrics, repository, request.match_info.get("model", ""),
                    answered=request.get(MODEL_VERSION), status=status, endpoint=endpoint,
                    seconds=time.perf_counter() - started,
                )  # fmt: skip

    return handle


def record_request(
    metrics: AgentMetrics,
    repository: ModelRepository,
    name: str,
    *,
    answered: str | None,
    status: int,
    endpoint: str,
    seconds: float,
) -> None:
    """Count one inference request by model, answering version and final status.

    A failed request has no answering version: it counts against the one serving now, since
    probation judges a new model by its failures too.
    """
    if answered is None:
        answered = str(repository.get(name).version) if name in repository else ""
    metrics.observe_request(
        model=name if name in repository else UNKNOWN_MODEL,
        version=str(answered),
        status=status,
        endpoint=endpoint,
        seconds=seconds,
    )


def domain_error_reply(
    error: AgentError, method: str, path: str
) -> tuple[int, str, dict[str, str] | None]:
    """The status, message and extra headers a domain error is answered with."""
    status = status_for(error)
    if status >= 500 and not isinstance(error, ServingError):
        log.error("%s %s failed: %s", method, path, error, exc_info=error)
    return status, str(error), _error_headers(error)


async def _answer(
    request: web.Request, handler: Handler, expected: bytes | None
) -> web.StreamResponse:
    try:
        if expected is not None and request.path not in OPEN_PATHS:
            check_bearer(request.headers.get(hdrs.AUTHORIZATION), expected)
        return await handler(request)
    except AgentError as e:
        return error_response(*domain_error_reply(e, request.method, request.path))
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(e.status, _http_error_message(request, e), _kept_headers(e))
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("%s %s failed unexpectedly", request.method, request.path)
        return error_response(500, "internal server error")


def _http_error_message(request: web.Request, error: web.HTTPException) -> str:
    if error.status == 404:
        return f"no endpoint {request.path}"
    if error.status == 405:
        return f"method {request.method} is not allowed on {request.path}"
    return error.text or error.reason


def _kept_headers(error: web.HTTPException) -> dict[str, str]:
    dropped = {hdrs.CONTENT_TYPE, hdrs.CONTENT_LENGTH}
    return {k: v for k, v in error.headers.items() if k not in dropped}


def check_bearer(header: str | None, expected: bytes) -> None:
    """Raise UnauthorizedError unless `header` is `Bearer <expected>` (HTTP and gRPC alike).

    gRPC carries the same header as `authorization` metadata and gets the same words, so a
    client sees one message whichever half of the protocol it speaks.
    """
    if header is None:
        raise UnauthorizedError("this endpoint needs 'Authorization: Bearer <token>'")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        raise UnauthorizedError("'Authorization' must be 'Bearer <token>', with the word Bearer")
    given = value.strip().encode("utf-8", "surrogateescape")
    # compare_digest takes the same time wherever the first difference is.
    if not hmac.compare_digest(given, expected):
        raise UnauthorizedError("the bearer token is not valid")
