"""Keeping what devices report within `[fleet]` retention: by age and by count per device.

Events and telemetry only grow otherwise. The pass runs every `[fleet] prune_interval_s` in a
task `serve` owns, on one registry at a time (`services.duties`); a device's last state is one
row it replaces, so it is never pruned.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from model_registry.services.context import RegistryContext
from model_registry.services.duties import duty_loop

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetentionReport:
    """What one pass deleted."""

    events_pruned: int = 0
    telemetry_pruned: int = 0
    drift_records_pruned: int = 0


async def prune_device_messages(ctx: RegistryContext) -> RetentionReport:
    """Delete events and telemetry past their age, and beyond their count per device."""
    fleet = ctx.config.fleet
    now = ctx.clock()
    events = await ctx.storage.prune_messages(
        "events", now - timedelta(days=fleet.events_retention_days), fleet.events_max_per_device
    )
    telemetry = await ctx.storage.prune_messages(
        "telemetry",
        now - timedelta(days=fleet.telemetry_retention_days),
        fleet.telemetry_max_per_device,
    )
    # Version points are the history duty's: merged into 1-minute, then 1-hour points and
    # deleted after `[history] hour_points_days` (services/history.py).
    # Drift status changes go with the events' age; each status's latest record stays, since
    # it is the status the drift duty compares with.
    drift = await ctx.storage.prune_drift_records(now - timedelta(days=fleet.events_retention_days))
    return RetentionReport(events, telemetry, drift)


async def retention_loop(ctx: RegistryContext) -> None:
    """Run `prune_device_messages` every `[fleet] prune_interval_s`, on one registry at a time."""

    async def one_pass() -> None:
        report = await prune_device_messages(ctx)
        if report != RetentionReport():
            log.info(
                "retention: deleted %d events, %d telemetry reports and %d drift records",
                report.events_pruned,
                report.telemetry_pruned,
                report.drift_records_pruned,
            )

    await duty_loop(ctx.storage, "retention", one_pass, ctx.config.fleet.prune_interval_s)
