"""The dashboard's routes: its static files, signing in and out, and the live stream.

The files are read once from the package (`static/`), so a request can name only one of
them: there is no path on disk to walk. Every answer under `/ui/` carries a
Content-Security-Policy that allows this registry's own scripts, styles and connections and
nothing else (no inline script, no other origin, no framing).
"""

from __future__ import annotations

import mimetypes
from importlib import resources
from typing import Any

from aiohttp import web

from model_registry.api.auth import CTX_KEY, token_role
from model_registry.api.errors import Handler
from model_registry.api.params import field, json_body
from model_registry.dashboard.headers import SECURITY_HEADERS
from model_registry.dashboard.live import events
from model_registry.dashboard.session import (
    MAX_COOKIE_CHARS,
    check_origin,
    clear_session_cookie,
    csrf_token,
    session_token,
    set_session_cookie,
)
from model_registry.errors import AuthenticationError, NotFoundError

_TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css"}


def _load_files() -> dict[str, tuple[bytes, str]]:
    """Every file of `static/`, by its path under `/ui/`, with its content type."""
    files: dict[str, tuple[bytes, str]] = {}
    root = resources.files("model_registry.dashboard") / "static"

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            name = prefix + child.name
            if child.is_dir():
                walk(child, name + "/")
            elif child.is_file():
                suffix = "." + child.name.rsplit(".", 1)[-1]
                kind = _TYPES.get(suffix) or mimetypes.guess_type(child.name)[0]
                files[name] = (child.read_bytes(), kind or "application/octet-stream")

    walk(root, "")
    return files


STATIC_FILES = _load_files()


async def static_file(request: web.Request) -> web.Response:
    """GET /ui/{path}: one file of the dashboard; `/ui/` is its page."""
    path = request.match_info["path"] or "index.html"
    found = STATIC_FILES.get(path)
    if found is None:
        raise NotFoundError(f"the dashboard has no file {path[:100]!r}")
    body, kind = found
    return web.Response(body=body, content_type=kind, charset="utf-8")


async def get_session(request: web.Request) -> web.Response:
    """GET /ui/session: who the session cookie signs in as, and its CSRF value; 401 without."""
    token = session_token(request)
    if token is None:
        raise AuthenticationError("not signed in: POST /ui/session with an API token")
    return web.json_response(await _session_view(request, token))


async def create_session(request: web.Request) -> web.Response:
    """POST /ui/session {"token"}: check the API token and keep it in the session cookie."""
    check_origin(request)
    body = await json_body(request, ("token",))
    token = field(body, "token", str).strip()
    if not token or len(token) > MAX_COOKIE_CHARS:
        raise AuthenticationError("invalid or revoked token")
    response = web.json_response(await _session_view(request, token), status=201)
    set_session_cookie(response, request, token)
    return response


async def delete_session(request: web.Request) -> web.Response:
    """DELETE /ui/session: sign out (the token itself stays valid; revoke it to end it)."""
    check_origin(request)
    response = web.json_response({"signed_out": True})
    clear_session_cookie(response, request)
    return response


async def _session_view(request: web.Request, token: str) -> dict[str, Any]:
    role, principal = await token_role(request.app[CTX_KEY], f"Bearer {token}")
    return {"role": role, "name": principal.removeprefix("token:"), "csrf": csrf_token(token)}


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Add the Content-Security-Policy and its companions to every answer under /ui/."""
    if not request.path.startswith("/ui/"):
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as e:
        response = e
    if not response.prepared:  # a live stream has sent its headers already
        response.headers.update(SECURITY_HEADERS)
    return response


def dashboard_routes() -> list[web.RouteDef]:
    """The routes to add to the API application (before nothing else under /ui/)."""
    return [
        web.get("/ui/session", get_session),
        web.post("/ui/session", create_session),
        web.delete("/ui/session", delete_session),
        web.get("/ui/events", events),
        web.get("/ui/{path:.*}", static_file),
    ]
