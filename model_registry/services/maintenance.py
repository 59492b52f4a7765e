"""Periodic upkeep: re-sign what is in use before it expires, clear unused chunks.

Expiry defends devices against a frozen broker (docs/protocol.md section 9), so a healthy
registry must keep renewing the documents devices depend on: every release some device is
assigned, and every device's assignment (renewed with a new seq, as the protocol requires).

After `model-registry keys rotate-release` the same renewal replaces signatures by the retired
release key: devices that accepted the root naming the new key refuse documents signed by the
old one. `sync_broker` does it at start-up, before anything is published, so a device never
fetches a document its new root makes invalid; the periodic pass checks again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from edge_protocol import AssignedModel, Assignment, Envelope, Root
from model_registry.mqtt.publisher import Publisher
from model_registry.services.context import RegistryContext
from model_registry.services.deployments import reassign
from model_registry.services.duties import duty_loop
from model_registry.storage import DeviceRecord, ReleaseRecord

log = logging.getLogger(__name__)
MAINTENANCE_DUTY = "maintenance"  # the lease of the upkeep, held by one replica at a time


@dataclass
class MaintenanceReport:
    """What one pass changed."""

    releases_renewed: list[str] = field(default_factory=list)
    assignments_renewed: list[str] = field(default_factory=list)
    artifacts_cleared: list[str] = field(default_factory=list)


async def run_maintenance(ctx: RegistryContext) -> MaintenanceReport:
    """One pass: renew what is close to expiry, clear unassigned chunks.

    Events and telemetry are kept within their retention by `services.retention`.
    """
    report = MaintenanceReport()
    devices = await ctx.storage.devices()
    in_use = _assigned_releases(devices)
    horizon = ctx.clock() + timedelta(days=ctx.config.signing.resign_before_days)
    retired = await _retired_key_check(ctx)
    for model, version in sorted(in_use):
        release = await ctx.storage.get_release(model, version)
        if release.expires <= horizon or retired(release.envelope):
            await _renew_release(ctx, release)
            report.releases_renewed.append(f"{model}/{version}")
    for device in devices:
        stale = device.assignment is not None and retired(device.assignment)
        if _assignment_expires(device) <= horizon or stale:
            await reassign(ctx, device)
            report.assignments_renewed.append(device.device_id)
    async with ctx.state_lock:
        in_use = _assigned_releases(await ctx.storage.devices())
        report.artifacts_cleared = await _clear_unused_artifacts(ctx, in_use)
    return report


async def maintenance_loop(ctx: RegistryContext) -> None:
    """Run `run_maintenance` every configured interval, on one registry at a time."""

    async def one_pass() -> None:
        report = await run_maintenance(ctx)
        if report != MaintenanceReport():
            log.info("maintenance: %s", report)

    await duty_loop(
        ctx.storage, MAINTENANCE_DUTY, one_pass, ctx.config.signing.resign_check_interval_s
    )


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
    of artifacts that stopped being used while the registry was down. First, under the same
    lock, what a retired release key signed is re-signed, so that after a rotation devices
    receive the new root and then only documents it lets them accept.
    """
    async with ctx.state_lock:
        # Replicas on one database: only the holder of the upkeep duty re-signs, so two that
        # start together do not each renew an assignment with the same next seq.
        if await ctx.storage.acquire_duty(MAINTENANCE_DUTY):
            report = await renew_retired_signatures(ctx)
            if report != MaintenanceReport():
                log.info("re-signed with the current release key: %s", report)
        if ctx.publisher is not None:
            await _publish_everything(ctx, ctx.publisher)


async def renew_retired_signatures(ctx: RegistryContext) -> MaintenanceReport:
    """Re-sign with the current release key what an earlier release key signed.

    Releases that are assigned or not yet expired (so a later deploy or rollback finds them
    valid) get a fresh signature and expiry; every such assignment is renewed with seq + 1.
    Nothing is published: the caller holds `ctx.state_lock` and publishes afterwards.
    """
    report = MaintenanceReport()
    retired = await _retired_key_check(ctx)
    devices = await ctx.storage.devices()
    in_use = _assigned_releases(devices)
    now = ctx.clock()
    for summary in await ctx.storage.models():
        for release in await ctx.storage.releases(summary.name):
            wanted = (release.model, release.version) in in_use or release.expires > now
            if wanted and retired(release.envelope):
                renewed, envelope = ctx.signer.renew_release(release.envelope, now)
                await ctx.storage.replace_release_envelope(
                    release.model, release.version, envelope, renewed.expires
                )
                report.releases_renewed.append(f"{release.model}/{release.version}")
    for device in devices:
        if device.assignment is not None and retired(device.assignment):
            seq = device.assignment_seq + 1
            models = {m: AssignedModel.from_dict(e, m) for m, e in device.assigned.items()}
            _assignment, envelope = ctx.signer.assignment(device.device_id, seq, models, now)
            await ctx.storage.set_assignment(device.device_id, seq, envelope, device.assigned)
            report.assignments_renewed.append(device.device_id)
    return report


async def _retired_key_check(ctx: RegistryContext) -> Callable[[bytes], bool]:
    """Return a test for "this envelope lacks the current release key's signature".

    When the newest root does not name the current key, re-signing would replace documents
    devices accept with ones they refuse, so nothing counts as retired and the error is logged.
    """
    keyid = ctx.signer.keyid
    roots = await ctx.storage.roots()
    if roots:
        root = Root.from_dict(Envelope.from_bytes(roots[-1][1]).signed)
        if keyid not in root.roles["release"].keyids:
            log.error(
                "the release key %s... is not a release key of root v%d: devices refuse "
                "what this registry signs; was keys/release.pem restored from before a "
                "rotation? (the previous ones are in keys/retired/)",
                keyid[:12],
                root.version,
            )
            return lambda _envelope: False

    def retired(envelope: bytes) -> bool:
        return all(s.keyid != keyid for s in Envelope.from_bytes(envelope).signatures)

    return retired


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
