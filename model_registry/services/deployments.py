"""Deploy and roll back: turn "release R to these devices" into one signed assignment each.

The registry decides per device and publishes per device (docs/protocol.md 4.3): a deployment
gives every targeted device a new assignment with `seq + 1` that pins the release, on top of
whatever else the device is assigned. A rollback is a deployment of an earlier release.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from edge_protocol import AssignedModel
from model_registry.errors import ConflictError, InvalidInputError, NotFoundError, UnknownNameError
from model_registry.services.context import RegistryContext
from model_registry.services.experiment_overlap import refuse_overlap
from model_registry.storage import AssignmentUpdate, DeploymentRecord, DeviceRecord, ReleaseRecord

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


_KEY = re.compile(r"[\x21-\x7e]{1,200}")  # visible ASCII: no spaces, controls or Unicode


@dataclass(frozen=True)
class RequestKey:
    """A client's Idempotency-Key and the digest of what that request asked for."""

    key: str
    digest: str

    @classmethod
    def of(cls, key: str, **request: object) -> RequestKey:
        """Check the key's form; digest the request's fields."""
        if _KEY.fullmatch(key) is None:
            raise InvalidInputError(
                "the Idempotency-Key header must be 1 to 200 visible ASCII characters "
                "(no spaces), such as a UUID"
            )
        canonical = json.dumps(request, sort_keys=True, separators=(",", ":"))
        return cls(key, hashlib.sha256(canonical.encode()).hexdigest())


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
    record, _replayed = await deploy_once(
        ctx, model, version, target, created_by=created_by, kind=kind
    )
    return record


async def deploy_once(
    ctx: RegistryContext,
    model: str,
    version: int,
    target: Target,
    *,
    created_by: str,
    kind: str = "deploy",
    key: RequestKey | None = None,
    guard: bool = False,
) -> tuple[DeploymentRecord, bool]:
    """`deploy`, or with `key` the deployment an earlier request with that key made.

    Returns the deployment and whether it is such a replay. ConflictError when the key was
    used for a different request, and with `guard` when a targeted device is in a running
    experiment on the model (checked under the state lock: experiment_overlap.py).
    """
    release = await ctx.storage.get_release(model, version)
    ctx.require_broker(f"nothing was {'rolled back' if kind == 'rollback' else 'deployed'}")
    async with ctx.state_lock:
        if key is not None and (earlier := await replayed(ctx, key)) is not None:
            return earlier, True
        devices = await resolve(ctx, target)
        if guard:
            await refuse_overlap(ctx, model, (d.device_id for d in devices), kind)
        record, signed = await prepare_deployment(
            ctx, release, devices, target, created_by=created_by, kind=kind, key=key
        )
        # One transaction: the deployment is stored with every assignment or not at all.
        deployment_id = await ctx.storage.add_deployment(record, signed)
        await publish_deployment(ctx, release, signed)
    log.info("%s %s v%d to %s (%d devices)", kind, model, version, target.label, len(devices))
    return await ctx.storage.get_deployment(deployment_id), False


async def prepare_deployment(
    ctx: RegistryContext,
    release: ReleaseRecord,
    devices: list[DeviceRecord],
    target: Target,
    *,
    created_by: str,
    kind: str = "deploy",
    key: RequestKey | None = None,
    deadline_s: float | None = None,
) -> tuple[DeploymentRecord, list[AssignmentUpdate]]:
    """The deployment of `release` to `devices` and their signed assignments, not yet stored.

    The caller holds `ctx.state_lock`, stores both in one transaction (`add_deployment`, or
    with a rollout's change), then calls `publish_deployment`.
    """
    now = ctx.clock()
    created = now.replace(microsecond=0)
    lifetime = ctx.config.deploy.deadline_s if deadline_s is None else deadline_s
    record = DeploymentRecord(
        deployment_id=0,
        model=release.model,
        version=release.version,
        target_kind=target.kind,
        target=target.label,
        device_ids=tuple(d.device_id for d in devices),
        created=created,
        deadline=created + timedelta(seconds=lifetime),
        created_by=created_by,
        kind=kind,
        idempotency_key=key.key if key is not None else None,
        request_digest=key.digest if key is not None else None,
    )
    return record, await _sign_assignments(ctx, devices, release, now)


async def publish_deployment(
    ctx: RegistryContext, release: ReleaseRecord, signed: list[AssignmentUpdate]
) -> None:
    """Publish a stored deployment: the release and its chunks first, then the assignments.

    A registry killed before this publishes them at its next start (`sync_broker`).
    """
    await announce_release(ctx, release)
    if ctx.publisher is not None:
        await ctx.publisher.publish_assignments({u.device_id: u.envelope for u in signed})


async def replayed(ctx: RegistryContext, key: RequestKey) -> DeploymentRecord | None:
    """The deployment made with `key`, or None; ConflictError if it was for another request."""
    earlier = await ctx.storage.deployment_by_key(key.key)
    if earlier is None:
        return None
    if earlier.request_digest != key.digest:
        raise ConflictError(
            f"the Idempotency-Key {key.key!r} was already used for deployment "
            f"{earlier.deployment_id} ({earlier.kind} {earlier.model} v{earlier.version} to "
            f"{earlier.target}); send a new key for a different request"
        )
    return earlier


async def rollback(
    ctx: RegistryContext,
    model: str,
    target: Target,
    *,
    created_by: str,
    key: RequestKey | None = None,
    guard: bool = False,
) -> tuple[DeploymentRecord, bool]:
    """Deploy the release the target ran before its current one (or replay `key`'s rollback);
    `guard` as for `deploy_once`."""
    # Before resolving: once rolled back, "the release before the current one" is another.
    if key is not None and (earlier := await replayed(ctx, key)) is not None:
        return earlier, True
    await ctx.storage.releases(model)  # UnknownNameError for a model that was never pushed
    devices = await resolve(ctx, target)
    current = {d.assigned.get(model, {}).get("version") for d in devices}
    targeted = {d.device_id for d in devices}
    for past in await ctx.storage.deployments(model):
        if past.version not in current and targeted & set(past.device_ids):
            return await deploy_once(
                ctx, model, past.version, target, created_by=created_by, kind="rollback",
                key=key, guard=guard,
            )  # fmt: skip
    raise NotFoundError(f"no earlier release of {model!r} was deployed to {target.label}")


async def reassign(ctx: RegistryContext, device: DeviceRecord) -> None:
    """Re-sign a device's current assignment with seq + 1 (to renew its expiry)."""
    async with ctx.state_lock:
        fresh = await ctx.storage.get_device(device.device_id)
        await _publish_assignment(ctx, fresh, fresh.assigned)


async def resolve(ctx: RegistryContext, target: Target) -> list[DeviceRecord]:
    if target.group is not None:
        devices = await ctx.storage.devices(target.group)
        if not devices:
            raise UnknownNameError("group", target.group, f"group {target.group!r} has no devices")
        return devices
    return [await ctx.storage.get_device(device_id) for device_id in dict.fromkeys(target.devices)]


async def announce_release(ctx: RegistryContext, release: ReleaseRecord) -> None:
    # Chunks and the release go out before any assignment, so a device that receives its
    # assignment finds everything it needs already retained on the broker.
    if ctx.publisher is not None:
        await ctx.publisher.publish_release(release)
        await ctx.publisher.publish_artifact(release)


async def _sign_assignments(
    ctx: RegistryContext, devices: list[DeviceRecord], release: ReleaseRecord, now: datetime
) -> list[AssignmentUpdate]:
    """Each device's next assignment: what it has, with `release` pinned, seq + 1, signed."""
    pinned = AssignedModel(release.version, release.sha256, release.size)
    return await sign_model_entry(ctx, devices, release.model, pinned.to_dict(), now)


async def sign_model_entry(
    ctx: RegistryContext,
    devices: list[DeviceRecord],
    model: str,
    entry: dict[str, Any],
    now: datetime,
) -> list[AssignmentUpdate]:
    """Each device's next assignment: what it has, with `model`'s entry replaced by `entry`
    (a pinned release, perhaps with an experiment), seq + 1, signed."""
    batch = []
    for device in devices:
        assigned = {**device.assigned, model: entry}
        models = {name: AssignedModel.from_dict(e, name) for name, e in assigned.items()}
        batch.append((device.device_id, _next_seq(device), models, assigned))
    # Thousands of signatures take seconds of CPU: a worker thread keeps the API answering.
    envelopes = await asyncio.to_thread(
        ctx.signer.assignments, ((d, seq, models) for d, seq, models, _ in batch), now
    )
    return [
        AssignmentUpdate(device_id, seq, envelope, assigned)
        for (device_id, seq, _, assigned), envelope in zip(batch, envelopes, strict=True)
    ]


async def _publish_assignment(
    ctx: RegistryContext, device: DeviceRecord, assigned: dict[str, dict[str, object]]
) -> None:
    seq = _next_seq(device)
    models = {name: AssignedModel.from_dict(entry, name) for name, entry in assigned.items()}
    _assignment, envelope = ctx.signer.assignment(device.device_id, seq, models, ctx.clock())
    await ctx.storage.set_assignment(device.device_id, seq, envelope, assigned)
    if ctx.publisher is not None:
        await ctx.publisher.publish_assignment(device.device_id, envelope)


def _next_seq(device: DeviceRecord) -> int:
    return max(device.assignment_seq, _reported_seq(device)) + 1


def _reported_seq(device: DeviceRecord) -> int:
    """The assignment seq the device says it accepted (0 when unknown).

    Normally never above ours; it is after a registry restored from an older backup, and a seq
    at or below the device's would be refused as a replay.
    """
    trust = (device.state or {}).get("trust")
    seq = trust.get("assignment_seq") if isinstance(trust, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) and seq > 0 else 0
