"""Endpoints for devices."""

from __future__ import annotations

import base64

from aiohttp import web

from model_registry.api.auth import CTX_KEY, require
from model_registry.api.params import field, json_body
from model_registry.api.views import device_view
from model_registry.services.devices import DEFAULT_GROUP, add_device


@require("viewer")
async def list_devices(request: web.Request) -> web.Response:
    """GET /v1/devices[?group=G]."""
    devices = await request.app[CTX_KEY].storage.devices(request.query.get("group"))
    return web.json_response({"devices": [device_view(d) for d in devices]})


@require("admin")
async def create_device(request: web.Request) -> web.Response:
    """POST /v1/devices {"device_id", "group"?, "mqtt_url"?}: returns the bundle once."""
    body = await json_body(request)
    bundle = await add_device(
        request.app[CTX_KEY],
        field(body, "device_id", str),
        group=field(body, "group", str, required=False) or DEFAULT_GROUP,
        mqtt_url=field(body, "mqtt_url", str, required=False),
    )
    files = {name: base64.b64encode(data).decode() for name, data in bundle.files.items()}
    return web.json_response({**device_view(bundle.device), "bundle": files}, status=201)


@require("viewer")
async def get_device(request: web.Request) -> web.Response:
    """GET /v1/devices/{id}: state, recent events and telemetry."""
    storage = request.app[CTX_KEY].storage
    device_id = request.match_info["id"]
    device = await storage.get_device(device_id)
    events = await storage.events(device_id, limit=50)
    telemetry = await storage.telemetry(device_id, limit=50)
    return web.json_response(
        {
            **device_view(device),
            "state": device.state,
            "events": [e.body for e in events],
            "telemetry": [t.body for t in telemetry],
        }
    )
