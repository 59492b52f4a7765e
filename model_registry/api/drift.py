"""GET /v1/models/{name}/drift: each feature's drift against the release's profile."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web

from edge_protocol import format_time
from model_registry.api.auth import CTX_KEY, require
from model_registry.api.params import query_text
from model_registry.services.drift import DriftLimits, drift_rows, parse_window
from model_registry.storage import DriftRecord

MAX_RECORDS = 100  # drift status changes in one answer, newest first


@require("viewer")
async def get_drift(request: web.Request) -> web.Response:
    """GET /v1/models/{name}/drift[?device=ID][&window=1h]."""
    ctx = request.app[CTX_KEY]
    name = request.match_info["name"]
    await ctx.storage.releases(name)  # NotFoundError (404) for a model never pushed
    device_id = query_text(request, "device")
    if device_id is not None:
        await ctx.storage.get_device(device_id)  # NotFoundError (404) for an unknown device
    text = query_text(request, "window")
    window = (
        parse_window(text) if text is not None else timedelta(seconds=ctx.config.drift.window_s)
    )
    until = ctx.clock()
    limits = DriftLimits.from_config(ctx.config.drift)
    rows = await drift_rows(ctx.storage, name, until - window, limits, device_id=device_id)
    records = await ctx.storage.drift_records(name, MAX_RECORDS)
    if device_id is not None:
        records = [r for r in records if r.device_id == device_id]
    return web.json_response(
        {
            "model": name,
            "device_id": device_id,
            "window_s": int(window.total_seconds()),
            "since": format_time(until - window),
            "until": format_time(until),
            "limits": {
                "warn_psi": limits.warn_psi,
                "alert_psi": limits.alert_psi,
                "min_samples": limits.min_samples,
            },
            "features": [row.to_dict() for row in rows],
            "records": [record_view(r) for r in records],
        }
    )


def record_view(record: DriftRecord) -> dict[str, Any]:
    """One drift status change, as the API shows it."""
    return {
        "kind": record.kind, "at": format_time(record.at), "version": record.version,
        "device_id": record.device_id, "feature": record.feature, "status": record.status,
        "previous": record.previous, "psi": record.psi, "max_cdf_gap": record.max_cdf_gap,
        "samples": record.samples,
    }  # fmt: skip
