"""Deploy and roll back: turn "release R to these devices" into one signed assignment each.

The registry decides per device and publishes per device (docs/protocol.md 4.3): a deployment
gives every targeted device a new assignment with `seq + 1` that pins the release, on top of
whatever else the device is assigned. A rollback is a deployment of an earlier release.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from edge_protocol import AssignedModel
from model_registry.errors import InvalidInputError, NotFoundError
from model_registry.services.context import RegistryContext
from model_registry.storage import DeploymentRecord, DeviceRecord, ReleaseRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Target:
    """A deployment's target: one group, or a list of device ids."""

    group: str | None = None
    devices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (self.group is None) == (not self.devices):
            raise InvalidInputError("give either a group or a list of devices, not both or neither")

    @property
    def kind(self) -> str:
        """ "group" or "devices"."""
        return "group" if self.group is not None else "devices"

    @property
    def label(self) -> str:
        """The group name, or the device ids joined by commas."""
        return self.group if self.group is not None else ",".join(self.devices)


async def deploy(
    ctx: RegistryContext,
    model: str,
    version: int,
    target: Target,
    *,
    created_by: str,
    kind: str = "deploy",
) -> DeploymentRecord:
    """Assign release `model` `version` to every targeted device and publish the assignments."""
    release = await ctx.storage.get_release(model, version)
    async with ctx.state_lock:
        devices = await _resolve(ctx, target)
        now = ctx.clock()
        record = DeploymentRecord(
            deployment_id=0,
            model=model,
            version=version,
            target_kind=target.kind,
            target=target.label,
            device_ids=tuple(d.device_id for d in devices),
            created=now.replace(microsecond=0),
            deadline=now.replace(microsecond=0) + timedelta(seconds=ctx.config.deploy.deadline_s),
            created_by=created_by,
            kind=kind,
        )
        deployment_id = await ctx.storage.add_deployment(record)
        await _announce_release(ctx, release)
        for device in devices:
            await _assign(ctx, device, release)
    log.info("%s %s v%d to %s (%d devices)", kind, model, version, target.label, len(devices))
    return await ctx.storage.get_deployment(deployment_id)


async def rollback(
    ctx: RegistryContext, model: str, target: Target, *, created_by: str
) -> DeploymentRecord:
    """Deploy the release the target ran before its current one."""
    devices = await _resolve(ctx, target)
    current = {d.assigned.get(model, {}).get("version") for d in devices}
    targeted = {d.device_id for d in devices}
    for past in await ctx.storage.deployments(model):
        if past.version not in current and targeted & set(past.device_ids):
            return await deploy(
                ctx, model, past.version, target, created_by=created_by, kind="rollback"
            )
    raise NotFoundError(f"no earlier release of {model!r} was deployed to {target.label}")


async def reassign(ctx: RegistryContext, device: DeviceRecord) -> None:
    """Re-sign a device's current assignment with seq + 1 (to renew its expiry)."""
    async with ctx.state_lock:
        fresh = await ctx.storage.get_device(device.device_id)
        await _publish_assignment(ctx, fresh, fresh.assigned)


async def _resolve(ctx: RegistryContext, target: Target) -> list[DeviceRecord]:
    if target.group is not None:
        devices = await ctx.storage.devices(target.group)
        if not devices:
            raise NotFoundError(f"group {target.group!r} has no devices")
        return devices
    return [await ctx.storage.get_device(device_id) for device_id in dict.fromkeys(target.devices)]


async def _announce_release(ctx: RegistryContext, release: ReleaseRecord) -> None:
    # Chunks and the release go out before any assignment, so a device that receives its
    # assignment finds everything it needs already retained on the broker.
    if ctx.publisher is not None:
        await ctx.publisher.publish_release(release)
        await ctx.publisher.publish_artifact(release)


async def _assign(ctx: RegistryContext, device: DeviceRecord, release: ReleaseRecord) -> None:
    pinned = AssignedModel(release.version, release.sha256, release.size)
    assigned = {**device.assigned, release.model: pinned.to_dict()}
    await _publish_assignment(ctx, device, assigned)


async def _publish_assignment(
    ctx: RegistryContext, device: DeviceRecord, assigned: dict[str, dict[str, object]]
) -> None:
    seq = max(device.assignment_seq, _reported_seq(device)) + 1
    models = {name: AssignedModel.from_dict(entry, name) for name, entry in assigned.items()}
    _assignment, envelope = ctx.signer.assignment(device.device_id, seq, models, ctx.clock())
    await ctx.storage.set_assignment(device.device_id, seq, envelope, assigned)
    if ctx.publisher is not None:
        await ctx.publisher.publish_assignment(device.device_id, envelope)


def _reported_seq(device: DeviceRecord) -> int:
    """The assignment seq the device says it accepted (0 when unknown).

    Normally never above ours; it is after a registry restored from an older backup, and a seq
    at or below the device's would be refused as a replay.
    """
    trust = (device.state or {}).get("trust")
    seq = trust.get("assignment_seq") if isinstance(trust, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and seq > 0 else 0
