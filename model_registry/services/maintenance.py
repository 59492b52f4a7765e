"""Periodic upkeep: re-sign what is still in use before it expires, clear unused chunks.

Expiry defends devices against a frozen broker (docs/protocol.md section 9), so a healthy
registry must keep renewing the documents devices depend on: every release some device is
assigned, and every device's assignment (renewed with a new seq, as the protocol requires).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from edge_protocol import Assignment, Envelope
from model_registry.mqtt.publisher import Publisher
from model_registry.services.context import RegistryContext
from model_registry.services.deployments import reassign
from model_registry.storage import DeviceRecord, ReleaseRecord

log = logging.getLogger(__name__)


@dataclass
class MaintenanceReport:
    """What one pass changed."""

    releases_renewed: list[str] = field(default_factory=list)
    assignments_renewed: list[str] = field(default_factory=list)
    artifacts_cleared: list[str] = field(default_factory=list)


async def run_maintenance(ctx: RegistryContext) -> MaintenanceReport:
    """One pass: renew releases and assignments close to expiry, clear unassigned chunks."""
    report = MaintenanceReport()
    devices = await ctx.storage.devices()
    in_use = _assigned_releases(devices)
    horizon = ctx.clock() + timedelta(days=ctx.config.signing.resign_before_days)
    for model, version in sorted(in_use):
        release = await ctx.storage.get_release(model, version)
        if release.expires <= horizon:
            await _renew_release(ctx, release)
            report.releases_renewed.append(f"{model}/{version}")
    for device in devices:
        if _assignment_expires(device) <= horizon:
            await reassign(ctx, device)
            report.assignments_renewed.append(device.device_id)
    async with ctx.state_lock:
        in_use = _assigned_releases(await ctx.storage.devices())
        report.artifacts_cleared = await _clear_unused_artifacts(ctx, in_use)
    return report


async def maintenance_loop(ctx: RegistryContext) -> None:
    """Run `run_maintenance` every configured interval until cancelled."""
    while True:
        try:
            report = await run_maintenance(ctx)
            if report.releases_renewed or report.assignments_renewed or report.artifacts_cleared:
                log.info("maintenance: %s", report)
        except asyncio.CancelledError:
            raise
        except Exception:  # one failed pass must not end upkeep for good
            log.exception("maintenance pass failed; retrying at the next interval")
        await asyncio.sleep(ctx.config.signing.resign_check_interval_s)


def _assigned_releases(devices: list[DeviceRecord]) -> set[tuple[str, int]]:
    return {
        (model, int(entry["version"]))
        for device in devices
        for model, entry in device.assigned.items()
    }


def _assignment_expires(device: DeviceRecord) -> datetime:
    if device.assignment is None:
        return datetime.max.replace(tzinfo=UTC)
    return Assignment.from_dict(Envelope.from_bytes(device.assignment).signed).expires


async def _renew_release(ctx: RegistryContext, release: ReleaseRecord) -> None:
    renewed, envelope = ctx.signer.renew_release(release.envelope, ctx.clock())
    await ctx.storage.replace_release_envelope(
        release.model, release.version, envelope, renewed.expires
    )
    if ctx.publisher is not None:
        await ctx.publisher.publish_release(
            await ctx.storage.get_release(release.model, release.version)
        )


async def sync_broker(ctx: RegistryContext) -> None:
    """Publish the registry's whole retained state, and clear chunks nobody is assigned.

    Run at start-up: an embedded broker starts empty, and an external one may hold chunks
    of artifacts that stopped being used while the registry was down.
    """
    if ctx.publisher is None:
        return
    async with ctx.state_lock:
        await _publish_everything(ctx, ctx.publisher)


async def _publish_everything(ctx: RegistryContext, publisher: Publisher) -> None:
    for version, envelope in await ctx.storage.roots():
        await publisher.publish_root(version, envelope)
    devices = await ctx.storage.devices()
    in_use = _assigned_releases(devices)
    for summary in await ctx.storage.models():
        for release in await ctx.storage.releases(summary.name):
            await publisher.publish_release(release)
            if (release.model, release.version) in in_use:
                await publisher.publish_artifact(release, force=True)
            else:
                await publisher.clear_artifact(release)
    for device in devices:
        if device.assignment is not None:
            await publisher.publish_assignment(device.device_id, device.assignment)


async def _clear_unused_artifacts(ctx: RegistryContext, in_use: set[tuple[str, int]]) -> list[str]:
    if ctx.publisher is None:
        return []
    used = {(await ctx.storage.get_release(m, v)).sha256 for m, v in in_use}
    cleared = []
    for summary in await ctx.storage.models():
        for release in await ctx.storage.releases(summary.name):
            if release.sha256 not in used and ctx.publisher.is_published(release.sha256):
                await ctx.publisher.clear_artifact(release)
                cleared.append(release.sha256)
    return cleared
