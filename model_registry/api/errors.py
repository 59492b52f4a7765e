"""The one place where registry errors become HTTP statuses and `{"error": ...}` bodies."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from edge_protocol.errors import FormatError
from model_registry.api.keys import CTX_KEY
from model_registry.errors import (
    AccuracyGateError,
    AuthenticationError,
    BuildError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    RegistryError,
    TooLargeError,
    UnavailableError,
    UnknownNameError,
    UnsupportedMediaError,
)
from model_registry.services.names import explain

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Most specific first: the first class an error is an instance of decides its status.
STATUS_BY_ERROR: tuple[tuple[type[Exception], int], ...] = (
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    (NotFoundError, 404),
    (ConflictError, 409),
    (TooLargeError, 413),
    (UnsupportedMediaError, 415),
    (AccuracyGateError, 422),
    (InvalidInputError, 400),
    (FormatError, 400),
    (BuildError, 422),
    (UnavailableError, 503),
    (RegistryError, 500),
)


def error_response(status: int, message: str) -> web.Response:
    """Return the API's error body with `status`."""
    response = web.json_response({"error": message}, status=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="model-registry"'
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map domain errors and aiohttp's own HTTP errors to JSON error bodies."""
    try:
        return await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(e.status, e.reason)
    except (RegistryError, FormatError) as e:
        status = next(code for cls, code in STATUS_BY_ERROR if isinstance(e, cls))
        if status >= 500 and not isinstance(e, UnavailableError):  # a 503 is no fault of ours
            log.exception("request %s %s failed", request.method, request.path)
        if isinstance(e, UnknownNameError):
            return error_response(status, await _with_close_names(request, e))
        return error_response(status, str(e))
    except Exception:
        log.exception("request %s %s failed unexpectedly", request.method, request.path)
        return error_response(500, "internal error; see the registry log")


async def _with_close_names(request: web.Request, error: UnknownNameError) -> str:
    """The sentence of a 404 for a name, with the close names the registry does have."""
    if CTX_KEY not in request.app:
        return str(error)
    return await explain(request.app[CTX_KEY].storage, error)
