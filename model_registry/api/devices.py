"""Endpoints for devices."""

from __future__ import annotations

import base64
import re
from typing import Any

from aiohttp import web

from edge_protocol import format_time
from model_registry.api.auth import CTX_KEY, require
from model_registry.api.params import field, int_param, json_body, query_text, show
from model_registry.api.views import device_detail_view, device_view
from model_registry.errors import InvalidInputError, UnknownNameError
from model_registry.services.context import RegistryContext
from model_registry.services.devices import DEFAULT_GROUP, add_device, move_device, remove_device
from model_registry.services.fleet import device_detail

DEFAULT_EVENTS = 50
DEFAULT_TELEMETRY = 100
MAX_MESSAGES = 1000  # events or telemetry reports in one answer
# What goes into the bundle's device.toml: a broker URL and nothing that could end the string.
_MQTT_URL = re.compile(r"^mqtts?://([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\]):[0-9]{1,5}$")


@require("viewer")
async def list_devices(request: web.Request) -> web.Response:
    """GET /v1/devices[?group=G]."""
    ctx = request.app[CTX_KEY]
    group = query_text(request, "group")
    devices = await ctx.storage.devices(group)
    if group is not None and not devices:
        # A group exists only through its devices: a mistyped one is named, as deploy names it.
        raise UnknownNameError("group", group, f"group {group!r} has no devices")
    now = ctx.clock()
    return web.json_response(
        {"registry": registry_view(ctx), "devices": [device_view(d, now) for d in devices]}
    )


def registry_view(ctx: RegistryContext) -> dict[str, Any]:
    """Whether the registry itself hears the broker: without it every device looks silent."""
    link = ctx.broker_link
    since = None if link is None or link.since is None else link.since.replace(microsecond=0)
    return {
        "broker_connected": link is not None and link.connected,
        "since": None if since is None else format_time(since),
    }


@require("admin")
async def create_device(request: web.Request) -> web.Response:
    """POST /v1/devices {"device_id", "group"?, "mqtt_url"?}: the bundle (once) and broker login."""
    body = await json_body(request, ("device_id", "group", "mqtt_url"))
    bundle = await add_device(
        request.app[CTX_KEY],
        field(body, "device_id", str),
        group=field(body, "group", str, required=False) or DEFAULT_GROUP,
        mqtt_url=_mqtt_url(field(body, "mqtt_url", str, required=False)),
    )
    files = {name: base64.b64encode(data).decode() for name, data in bundle.files.items()}
    broker = {"status": bundle.broker.status, "detail": bundle.broker.detail}
    view = device_view(bundle.device, request.app[CTX_KEY].clock())
    return web.json_response({**view, "bundle": files, "broker": broker}, status=201)


@require("viewer")
async def get_device(request: web.Request) -> web.Response:
    """GET /v1/devices/{id}[?events=N&telemetry=N]: state, recent events, telemetry series."""
    detail = await device_detail(
        request.app[CTX_KEY],
        request.match_info["id"],
        events=_limit(request, "events", DEFAULT_EVENTS),
        telemetry=_limit(request, "telemetry", DEFAULT_TELEMETRY),
    )
    return web.json_response(device_detail_view(detail, request.app[CTX_KEY].clock()))


@require("admin")
async def delete_device(request: web.Request) -> web.Response:
    """DELETE /v1/devices/{id}: revoke its broker login, clear its assignment, forget it."""
    ctx = request.app[CTX_KEY]
    removed = await remove_device(ctx, request.match_info["id"])
    broker = {"status": removed.broker.status, "detail": removed.broker.detail}
    return web.json_response({**device_view(removed.device, ctx.clock()), "broker": broker})


@require("admin")
async def patch_device(request: web.Request) -> web.Response:
    """PATCH /v1/devices/{id} {"group"}: move the device; its assignment does not change."""
    body = await json_body(request, ("group",))
    ctx = request.app[CTX_KEY]
    device = await move_device(ctx, request.match_info["id"], field(body, "group", str))
    return web.json_response(device_view(device, ctx.clock()))


def _limit(request: web.Request, name: str, default: int) -> int:
    text = query_text(request, name)
    return default if text is None else int_param(text, name, maximum=MAX_MESSAGES)


def _mqtt_url(url: str | None) -> str | None:
    match = None if url is None else _MQTT_URL.fullmatch(url)
    if url is not None and (match is None or not 1 <= int(url.rsplit(":", 1)[1]) <= 65535):
        raise InvalidInputError(
            f"mqtt_url must be mqtt://HOST:PORT or mqtts://HOST:PORT, not {show(url)}"
        )
    return url
