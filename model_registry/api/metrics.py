"""The registry's Prometheus metrics: API requests, plus fleet gauges read at scrape time."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from aiohttp import web

from edge_common.prometheus import family_lines
from model_registry.api.errors import Handler
from model_registry.services.context import RegistryContext
from model_registry.services.fleet import (
    OFFLINE,
    ONLINE,
    STALE,
    as_dict,
    connection,
    model_reports,
)
from model_registry.storage import ROLLOUT_STATES, RolloutRecord


@dataclass(frozen=True)
class CounterSource:
    """A counter family kept elsewhere (the ingest's), read at scrape time: one label."""

    help: str
    label: str
    read: Callable[[], Mapping[str, int]]
    type: str = "counter"  # or "gauge", for a family whose members come and go (a top-N)


@dataclass(frozen=True)
class GaugeSource:
    """A gauge kept elsewhere, read at scrape time."""

    help: str
    read: Callable[[], float]


@dataclass(frozen=True)
class FamilySource:
    """A family of samples with labels of their own, kept elsewhere, read at scrape time."""

    help: str
    type: str
    read: Callable[[], Iterable[tuple[Mapping[str, str], float]]]


class RegistryMetrics:
    """Counters the API updates, and the text exposition of them and of the fleet."""

    def __init__(self) -> None:
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.request_seconds: dict[tuple[str, str], float] = {}
        self.extra_counters: dict[str, CounterSource] = {}
        self.extra_gauges: dict[str, GaugeSource] = {}
        self.extra_families: dict[str, FamilySource] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        """Record one answered request."""
        self.requests[(method, route, status)] += 1
        key = (method, route)
        self.request_seconds[key] = self.request_seconds.get(key, 0.0) + seconds

    async def render(self, ctx: RegistryContext) -> str:
        """Return all metrics in the Prometheus text format 0.0.4."""
        lines = family_lines(
            "model_registry_http_requests_total",
            "API requests answered.",
            "counter",
            (
                ({"method": method, "route": route, "status": str(status)}, count)
                for (method, route, status), count in sorted(self.requests.items())
            ),
        )
        lines += await _fleet_lines(ctx)
        lines += await _rollout_lines(ctx)
        for name, counter in sorted(self.extra_counters.items()):
            samples = sorted(counter.read().items())
            lines += family_lines(
                name, counter.help, counter.type, (({counter.label: k}, v) for k, v in samples)
            )
        for name, gauge in sorted(self.extra_gauges.items()):
            lines += family_lines(name, gauge.help, "gauge", [({}, gauge.read())])
        for name, family in sorted(self.extra_families.items()):
            lines += family_lines(name, family.help, family.type, list(family.read()))
        return "\n".join(lines) + "\n"


async def _fleet_lines(ctx: RegistryContext) -> list[str]:
    devices = await ctx.storage.devices()
    models = await ctx.storage.models()
    now = ctx.clock()
    heard = {d.device_id: connection(d, now) for d in devices}
    totals = Counter(heard.values())
    by_group = Counter((d.group, heard[d.device_id]) for d in devices)
    groups = sorted({d.group for d in devices})
    served: Counter[tuple[str, str]] = Counter()
    assigned: Counter[tuple[str, str]] = Counter()
    for d in devices:
        for model, entry in d.assigned.items():
            assigned[(model, str(entry.get("version")))] += 1
        if heard[d.device_id] != ONLINE:
            continue  # what a silent device serves is not known
        for model, status in model_reports(d).items():
            version = as_dict(as_dict(status).get("active")).get("version")
            if isinstance(version, int) and not isinstance(version, bool):
                served[(model, str(version))] += 1
    seen = [d.last_seen for d in devices if d.last_seen is not None]
    lag = (now - max(seen)).total_seconds() if seen else 0.0
    return [
        *family_lines(
            "model_registry_devices",
            "Provisioned devices by connection state.",
            "gauge",
            (({"state": c}, totals[c]) for c in (ONLINE, STALE, OFFLINE)),
        ),
        *family_lines(
            "model_registry_group_devices",
            "Devices of each group by connection state.",
            "gauge",
            (
                ({"group": g, "state": c}, by_group[(g, c)])
                for g in groups
                for c in (ONLINE, STALE, OFFLINE)
            ),
        ),
        *family_lines(
            "model_registry_version_devices_serving",
            "Online devices whose last state serves this version of the model.",
            "gauge",
            (({"model": m, "version": v}, n) for (m, v), n in sorted(served.items())),
        ),
        *family_lines(
            "model_registry_version_devices_assigned",
            "Devices the registry assigned this version of the model.",
            "gauge",
            (({"model": m, "version": v}, n) for (m, v), n in sorted(assigned.items())),
        ),
        *family_lines(
            "model_registry_ingest_lag_seconds",
            "Seconds since the registry last stored a message of any device (0 before the first):"
            " grows when the ingest or the broker link stalls.",
            "gauge",
            [({}, round(lag, 3))],
        ),
        *family_lines(
            "model_registry_models",
            "Models with at least one release.",
            "gauge",
            [({}, len(models))],
        ),
    ]


async def _rollout_lines(ctx: RegistryContext) -> list[str]:
    """Rollouts by state; for each active one, its wave and the devices it moved."""
    rollouts = await ctx.storage.rollouts()
    states = Counter(r.state for r in rollouts)
    active = [r for r in rollouts if r.active]

    def labels(r: RolloutRecord) -> dict[str, str]:
        return {"rollout": str(r.rollout_id), "model": r.model, "version": str(r.version),
                "group": r.group, "state": r.state}  # fmt: skip

    return [
        *family_lines(
            "model_registry_rollouts",
            "Rollouts by state.",
            "gauge",
            (({"state": s}, states[s]) for s in ROLLOUT_STATES),
        ),
        *family_lines(
            "model_registry_rollout_wave",
            "The wave an active rollout is at (1 for the first; 0 before it starts).",
            "gauge",
            ((labels(r), len(r.waves)) for r in active),
        ),
        *family_lines(
            "model_registry_rollout_waves_passed",
            "Waves of an active rollout that passed their soak.",
            "gauge",
            ((labels(r), sum(1 for w in r.waves if w.passed is not None)) for r in active),
        ),
        *family_lines(
            "model_registry_rollout_devices_moved",
            "Devices an active rollout has moved to its version so far.",
            "gauge",
            ((labels(r), len(r.previous)) for r in active),
        ),
    ]


METRICS_KEY = web.AppKey("registry_metrics", RegistryMetrics)


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every request by method, route template and status."""
    started = time.perf_counter()
    response = await handler(request)
    route = request.match_info.route.resource
    template = route.canonical if route is not None else "unmatched"
    request.app[METRICS_KEY].observe(
        request.method, template, response.status, time.perf_counter() - started
    )
    return response
