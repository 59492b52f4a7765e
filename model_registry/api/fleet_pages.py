"""Endpoints the dashboard reads: a page of the fleet, and a device's history for charts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web

from edge_protocol import format_time
from model_registry.api.auth import CTX_KEY, require
from model_registry.api.devices import registry_view
from model_registry.api.params import query_text
from model_registry.api.views import device_view
from model_registry.errors import InvalidInputError
from model_registry.services.fleet_pages import FleetQuery, fleet_page
from model_registry.statistics import resources
from model_registry.statistics.buckets import bucket_start
from model_registry.statistics.window import device_series

# window -> (its length, the step of its points): about 60 to 200 points per chart, never finer
# than the history keeps (1-minute points for a day, 1-hour points after).
WINDOWS = {
    "1h": (timedelta(hours=1), 60),
    "6h": (timedelta(hours=6), 300),
    "24h": (timedelta(days=1), 900),
    "7d": (timedelta(days=7), 3600),
    "30d": (timedelta(days=30), 4 * 3600),
}
DEFAULT_WINDOW = "6h"


@require("viewer")
async def list_fleet(request: web.Request) -> web.Response:
    """GET /v1/fleet/devices[?group&connection&search&offset&limit]: one page of devices."""
    query = FleetQuery(
        group=query_text(request, "group") or None,
        connection=query_text(request, "connection") or None,
        search=query_text(request, "search") or None,
        offset=_whole(request, "offset", 0),
        limit=_whole(request, "limit", 100),
    )
    ctx = request.app[CTX_KEY]
    page = await fleet_page(ctx, query)
    now = ctx.clock()
    return web.json_response(
        {
            "registry": registry_view(ctx),
            "matched": page.matched,
            "offset": query.offset,
            "limit": query.limit,
            "devices": [device_view(d, now) for d in page.devices],
            "groups": [
                {
                    "group": g.group,
                    "devices": g.devices,
                    "online": g.online,
                    "stale": g.stale,
                    "offline": g.offline,
                }
                for g in page.groups
            ],
        }
    )


@require("viewer")
async def device_history(request: web.Request) -> web.Response:
    """GET /v1/devices/{id}/history[?window=6h]: the device's charts, oldest point first."""
    ctx = request.app[CTX_KEY]
    device = await ctx.storage.get_device(request.match_info["id"])  # 404 names close ids
    window = query_text(request, "window") or DEFAULT_WINDOW
    if window not in WINDOWS:
        raise InvalidInputError(f"window must be one of {', '.join(WINDOWS)}, not {window!r}")
    length, step_s = WINDOWS[window]
    until = ctx.clock()
    since = bucket_start(until - length, step_s)
    samples = await resources.series(ctx.storage, device.device_id, since, until, step_s)
    models = await device_series(ctx.storage, device.device_id, since, until, step_s)
    body: dict[str, Any] = {
        "device_id": device.device_id,
        "window": window,
        "since": format_time(since),
        "until": format_time(until),
        "step_s": step_s,
        "resources": [
            {
                "at": format_time(s.at),
                "reports": s.reports,
                "rss_bytes": s.rss_bytes,
                "cpu_percent": s.cpu_percent,
                "disk_used_percent": s.disk_used_percent,
            }
            for s in samples
        ],
        "models": models,
    }
    return web.json_response(body)


def _whole(request: web.Request, name: str, default: int) -> int:
    text = query_text(request, name)
    if text is None or text == "":
        return default
    if not text.isdecimal() or len(text) > 9:
        raise InvalidInputError(f"{name} must be a whole number, not {text[:40]!r}")
    return int(text)
