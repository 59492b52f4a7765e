"""What the API, the CLI and other features call: start, pause, resume, abort, status.

`start_rollout` is the one way in (the experiments' `promote` calls it too). Pause, resume and
abort may race with the controller on another replica: each re-reads the rollout and retries
when the stored step moved under it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace

from model_registry.errors import ConflictError, UnknownNameError
from model_registry.rollouts.changes import actor_of, start_wave, stop, store
from model_registry.rollouts.controller import advance
from model_registry.rollouts.gates import Verdict, install_gate
from model_registry.rollouts.health import verdicts
from model_registry.rollouts.policy import RolloutPolicy, parse_policy
from model_registry.rollouts.waves import plan, wave_devices
from model_registry.services.context import RegistryContext
from model_registry.services.fleet import STATUSES, DeviceProgress, deployment_progress
from model_registry.storage import RolloutDecision, RolloutRecord, RolloutWave

log = logging.getLogger(__name__)
RETRIES = 5  # re-reads when the controller changed the rollout meanwhile


async def start_rollout(
    ctx: RegistryContext,
    model: str,
    version: int,
    group: str,
    policy: RolloutPolicy,
    *,
    created_by: str,
) -> RolloutRecord:
    """Start rolling release `model` `version` out to `group`; its first wave starts now.

    UnknownNameError for a model, version, group or canary that does not exist (a canary must
    be in the group); ConflictError while another rollout of the model to the group is active.
    """
    await ctx.storage.get_release(model, version)
    devices = {d.device_id for d in await ctx.storage.devices(group)}
    if not devices:
        raise UnknownNameError("group", group, f"group {group!r} has no devices")
    for canary in policy.canary:
        if canary not in devices:
            raise UnknownNameError(
                "device", canary, f"canary {canary!r} is not a device of group {group!r}"
            )
    ctx.require_broker("no rollout was started")
    now = ctx.clock()
    record = RolloutRecord(
        rollout_id=0, model=model, version=version, group=group, policy=policy.to_dict(),
        state="running", created=now, created_by=created_by, updated=now,
    )  # fmt: skip
    started = RolloutDecision(
        now, created_by, "started",
        f"rollout of {model} version {version} to group {group!r} ({len(devices)} devices): "
        f"{policy.describe()}",
        {"policy": policy.to_dict(), "devices": len(devices)},
    )  # fmt: skip
    rollout_id = await ctx.storage.add_rollout(record, started)
    stored = await ctx.storage.get_rollout(rollout_id)
    # The first wave now, not at the controller's next pass; if this fails, that pass does it.
    try:
        return await start_wave(ctx, stored, policy, created_by)
    except ConflictError:
        return await ctx.storage.get_rollout(rollout_id)


async def pause(ctx: RegistryContext, rollout_id: int, actor: str) -> RolloutRecord:
    """No new wave starts until `resume`; the gates keep watching the moved devices."""

    async def change(r: RolloutRecord) -> RolloutRecord:
        _require(r, ("running", "waiting"), "paused")
        decision = RolloutDecision(ctx.clock(), actor, "paused", "no new wave starts until resumed")
        return await store(ctx, replace(r, state="paused", updated=ctx.clock()), [decision])

    return await _retrying(ctx, rollout_id, change)


async def resume(ctx: RegistryContext, rollout_id: int, actor: str) -> RolloutRecord:
    """Let a paused or waiting (`manual`) rollout move on: its next wave starts when due."""

    async def change(r: RolloutRecord) -> RolloutRecord:
        _require(r, ("paused", "waiting"), "resumed")
        why = "the next wave starts" if r.state == "waiting" else "waves move on again"
        decision = RolloutDecision(ctx.clock(), actor, "resumed", why)
        return await store(ctx, replace(r, state="running", updated=ctx.clock()), [decision])

    resumed = await _retrying(ctx, rollout_id, change)
    try:
        return await advance(ctx, resumed)
    except ConflictError:  # the controller moved it first
        return await ctx.storage.get_rollout(rollout_id)


async def abort(ctx: RegistryContext, rollout_id: int, actor: str) -> RolloutRecord:
    """Stop for good; with the policy's `rollback`, moved devices get their version back."""

    async def change(r: RolloutRecord) -> RolloutRecord:
        _require(r, ("running", "waiting", "paused"), "aborted")
        decision = RolloutDecision(ctx.clock(), actor, "aborted", f"aborted by {actor}")
        halt = {"gate": None, "reason": f"aborted by {actor}", "wave": len(r.waves)}
        policy = parse_policy(r.policy)
        return await stop(ctx, r, policy, "aborted", decision=decision, halt_record=halt)

    return await _retrying(ctx, rollout_id, change)


def _require(rollout: RolloutRecord, states: tuple[str, ...], action: str) -> None:
    if rollout.state not in states:
        raise ConflictError(
            f"rollout {rollout.rollout_id} is {rollout.state}: only a rollout that is "
            f"{' or '.join(states)} can be {action}"
        )


async def _retrying(
    ctx: RegistryContext,
    rollout_id: int,
    change: Callable[[RolloutRecord], Awaitable[RolloutRecord]],
) -> RolloutRecord:
    for attempt in range(RETRIES):
        rollout = await ctx.storage.get_rollout(rollout_id)
        try:
            return await change(rollout)
        except ConflictError as e:
            if "changed meanwhile" not in str(e) or attempt == RETRIES - 1:
                raise
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


@dataclass(frozen=True)
class WaveStatus:
    """One wave as `rollout status` shows it: started or only planned."""

    index: int
    percent: float
    devices: tuple[str, ...]  # started: the devices it moved; planned: those it would move now
    wave: RolloutWave | None  # None while only planned
    counts: dict[str, int]  # devices per deployment status (zeros while planned)

    @property
    def activated(self) -> int:
        """Its devices past probation on the new version."""
        return self.counts.get("activated", 0)


@dataclass(frozen=True)
class RolloutStatus:
    """A rollout, its waves (started, then planned) and its decisions, oldest first."""

    rollout: RolloutRecord
    policy: RolloutPolicy
    waves: tuple[WaveStatus, ...]
    decisions: tuple[RolloutDecision, ...]
    gates: tuple[Verdict, ...] = ()  # the gates of the current wave now (active rollouts)


async def rollout_status(ctx: RegistryContext, rollout_id: int) -> RolloutStatus:
    """Where a rollout stands, wave by wave, with every decision it made."""
    rollout = await ctx.storage.get_rollout(rollout_id)
    policy = parse_policy(rollout.policy)
    shown: list[WaveStatus] = []
    for wave in rollout.waves:
        counts = dict.fromkeys(STATUSES, 0)
        if wave.deployment_id is not None:
            counts = (await deployment_progress(ctx, wave.deployment_id)).counts
        shown.append(WaveStatus(wave.index, wave.percent, wave.devices, wave, counts))
    if rollout.active:
        group = [d.device_id for d in await ctx.storage.devices(rollout.group)]
        moved = set(rollout.previous)
        for index in range(len(rollout.waves), len(plan(policy.steps, policy.canary))):
            ids, percent = wave_devices(group, policy.steps, policy.canary, index, moved)
            moved |= set(ids)
            shown.append(WaveStatus(index, percent, ids, None, dict.fromkeys(STATUSES, 0)))
    decisions = await ctx.storage.rollout_decisions(rollout_id)
    gates = await _gates_now(ctx, rollout, policy) if rollout.active else ()
    return RolloutStatus(rollout, policy, tuple(shown), tuple(decisions), gates)


async def _gates_now(
    ctx: RegistryContext, rollout: RolloutRecord, policy: RolloutPolicy
) -> tuple[Verdict, ...]:
    """What the controller's gates say of the current wave now, as its next pass would judge."""
    current = next((w for w in reversed(rollout.waves) if w.passed is None), None)
    if current is None:
        return ()
    moved: list[DeviceProgress] = []
    for wave in rollout.waves:
        if wave.deployment_id is not None:
            moved += (await deployment_progress(ctx, wave.deployment_id)).devices
    install = install_gate(moved, policy)
    if current.settled is None:
        return (install,)
    health = await verdicts(ctx.storage, rollout, policy, current, ctx.clock())
    return (install, *health)


__all__ = ["abort", "actor_of", "pause", "resume", "rollout_status", "start_rollout"]
