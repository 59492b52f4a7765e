"""Endpoints for devices."""

from __future__ import annotations

import base64

from aiohttp import web

from model_registry.api.auth import CTX_KEY, require
from model_registry.api.params import field, int_param, json_body
from model_registry.api.views import device_detail_view, device_view
from model_registry.services.devices import DEFAULT_GROUP, add_device
from model_registry.services.fleet import device_detail

DEFAULT_EVENTS = 50
DEFAULT_TELEMETRY = 100


@require("viewer")
async def list_devices(request: web.Request) -> web.Response:
    """GET /v1/devices[?group=G]."""
    devices = await request.app[CTX_KEY].storage.devices(request.query.get("group"))
    return web.json_response({"devices": [device_view(d) for d in devices]})


@require("admin")
async def create_device(request: web.Request) -> web.Response:
    """POST /v1/devices {"device_id", "group"?, "mqtt_url"?}: the bundle (once) and broker login."""
    body = await json_body(request)
    bundle = await add_device(
        request.app[CTX_KEY],
        field(body, "device_id", str),
        group=field(body, "group", str, required=False) or DEFAULT_GROUP,
        mqtt_url=field(body, "mqtt_url", str, required=False),
    )
    files = {name: base64.b64encode(data).decode() for name, data in bundle.files.items()}
    broker = {"status": bundle.broker.status, "detail": bundle.broker.detail}
    body = {**device_view(bundle.device), "bundle": files, "broker": broker}
    return web.json_response(body, status=201)


@require("viewer")
async def get_device(request: web.Request) -> web.Response:
    """GET /v1/devices/{id}[?events=N&telemetry=N]: state, recent events, telemetry series."""
    detail = await device_detail(
        request.app[CTX_KEY],
        request.match_info["id"],
        events=_limit(request, "events", DEFAULT_EVENTS),
        telemetry=_limit(request, "telemetry", DEFAULT_TELEMETRY),
    )
    return web.json_response(device_detail_view(detail))


def _limit(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    return default if text is None else int_param(text, name)
