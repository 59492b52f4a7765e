"""The changes a rollout goes through, each stored with its deployments and its audit record.

Starting a wave and stopping (a halt or an abort) sign assignments: they run under
`ctx.state_lock`, as deploys do, and store the deployments with the rollout's new state in
one transaction before anything is published (a registry killed in between publishes them at
its next start, with the rest of its retained state).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from edge_protocol import format_time
from model_registry.rollouts.gates import MAX_NAMED_DEVICES, Verdict
from model_registry.rollouts.policy import RolloutPolicy
from model_registry.rollouts.waves import plan, wave_devices
from model_registry.services.context import RegistryContext
from model_registry.services.deployments import Target, prepare_deployment, publish_deployment
from model_registry.services.experiment_overlap import overlaps
from model_registry.storage import (
    AssignmentUpdate,
    ReleaseRecord,
    RolloutDecision,
    RolloutDeployment,
    RolloutRecord,
    RolloutWave,
)

log = logging.getLogger(__name__)
CONTROLLER = "controller"  # the actor of the controller's own decisions


async def store(
    ctx: RegistryContext,
    rollout: RolloutRecord,
    decisions: Sequence[RolloutDecision],
    deployments: Sequence[RolloutDeployment] = (),
) -> RolloutRecord:
    """Store a change that signs nothing (ConflictError if the rollout moved meanwhile)."""
    stored = await ctx.storage.update_rollout(rollout, deployments, decisions)
    for decision in decisions:
        log.info("rollout %d: %s: %s", rollout.rollout_id, decision.action, decision.reason)
    return stored


def actor_of(rollout: RolloutRecord) -> str:
    """Who deployments of the rollout are recorded as made by."""
    return f"rollout {rollout.rollout_id}"


async def start_wave(
    ctx: RegistryContext, rollout: RolloutRecord, policy: RolloutPolicy, actor: str
) -> RolloutRecord:
    """Start the rollout's next wave: sign and store its deployment with it, then publish."""
    ctx.require_broker(f"wave {len(rollout.waves) + 1} of rollout {rollout.rollout_id} waits")
    async with ctx.state_lock:
        index = len(rollout.waves)
        group = await ctx.storage.devices(rollout.group)
        moved = set(rollout.previous)
        ids, percent = wave_devices(
            [d.device_id for d in group], policy.steps, policy.canary, index, moved
        )
        chosen = [d for d in group if d.device_id in set(ids)]
        # A device in a running experiment on the model stays in it: this wave leaves it out,
        # and the next wave takes it once the experiment has ended (it is not moved yet).
        held = {
            device
            for _, reached in await overlaps(ctx, rollout.model, (d.device_id for d in chosen))
            for device in reached
        }
        chosen = [d for d in chosen if d.device_id not in held]
        release = await ctx.storage.get_release(rollout.model, rollout.version)
        now = ctx.clock()
        wave = RolloutWave(index, percent, tuple(d.device_id for d in chosen), now)
        previous = {
            **rollout.previous,
            **{d.device_id: _version(d.assigned.get(rollout.model)) for d in chosen},
        }
        total = len(plan(policy.steps, policy.canary))
        decision = RolloutDecision(
            now, actor, "wave_started",
            f"wave {index + 1} of {total} moves {len(chosen)} device(s) to version "
            f"{rollout.version}, reaching {percent:g}% of group {rollout.group!r}"
            + (f"; {len(held)} device(s) in a running experiment are left out" if held else ""),
            {"wave": index + 1, "percent": percent, "device_count": len(wave.devices),
             "devices": list(wave.devices[:MAX_NAMED_DEVICES])},
        )  # fmt: skip
        made: list[RolloutDeployment] = []
        signed: list[AssignmentUpdate] = []
        if chosen:
            record, signed = await prepare_deployment(
                ctx, release, chosen, Target(devices=wave.devices),
                created_by=actor_of(rollout), deadline_s=policy.deadline,
            )  # fmt: skip
            made.append(RolloutDeployment(record, signed, index))
        else:
            wave = replace(wave, settled=now)  # nothing to move: its soak begins at once
        changed = replace(rollout, waves=(*rollout.waves, wave), previous=previous, updated=now)
        stored = await store(ctx, changed, [decision], made)
        if signed:
            await publish_deployment(ctx, release, signed)
    return stored


async def halt(
    ctx: RegistryContext,
    rollout: RolloutRecord,
    policy: RolloutPolicy,
    verdict: Verdict,
    actor: str,
) -> RolloutRecord:
    """Halt on a broken gate: no wave starts again; moved devices get their version back."""
    reason = verdict.sentence()
    wave = len(rollout.waves)
    halt_record = {
        **verdict.numbers(),
        "reason": reason,
        "wave": wave,
        "at": format_time(ctx.clock()),
    }
    decision = RolloutDecision(
        ctx.clock(), actor, "halted", f"wave {wave}: {reason}", verdict.numbers()
    )
    return await stop(ctx, rollout, policy, "halted", decision=decision, halt_record=halt_record)


async def stop(
    ctx: RegistryContext,
    rollout: RolloutRecord,
    policy: RolloutPolicy,
    state: str,
    *,
    decision: RolloutDecision,
    halt_record: dict[str, Any] | None,
) -> RolloutRecord:
    """End the rollout in `state`; with `policy.rollback`, give moved devices back their version.

    Only devices still assigned the rollout's version are given back (another deploy since has
    the last word), each the version it was assigned before its wave. A device that had none
    keeps the new version: there is nothing to return to, and the decision says so.
    """
    if policy.rollback:
        ctx.require_broker(f"rollout {rollout.rollout_id} is not {state} yet")
    async with ctx.state_lock:
        fresh = await ctx.storage.get_rollout(rollout.rollout_id)
        if fresh.step != rollout.step:
            rollout = fresh  # changed since it was read: judge the stored one
            if not rollout.active:
                return rollout
        now = ctx.clock()
        decisions = [decision]
        made: list[RolloutDeployment] = []
        publish: list[tuple[ReleaseRecord, list[AssignmentUpdate]]] = []
        if policy.rollback:
            made, publish, note = await _give_back(ctx, rollout, policy)
            decisions.append(RolloutDecision(now, decision.actor, "rolled_back", *note))
        changed = replace(rollout, state=state, halt=halt_record, updated=now)
        stored = await store(ctx, changed, decisions, made)
        for release, signed in publish:
            await publish_deployment(ctx, release, signed)
    return stored


async def _give_back(
    ctx: RegistryContext, rollout: RolloutRecord, policy: RolloutPolicy
) -> tuple[
    list[RolloutDeployment],
    list[tuple[ReleaseRecord, list[AssignmentUpdate]]],
    tuple[str, dict[str, Any]],
]:
    """One rollback deployment per (wave, previous version) of the moved devices."""
    devices = {d.device_id: d for d in await ctx.storage.devices(rollout.group)}
    by_target: dict[tuple[int, int], list[str]] = defaultdict(list)
    kept: list[str] = []
    for wave in rollout.waves:
        for device_id in wave.devices:
            device = devices.get(device_id)
            if device is None or _version(device.assigned.get(rollout.model)) != rollout.version:
                continue  # removed, moved to another group, or assigned something else since
            earlier = rollout.previous.get(device_id)
            if earlier == rollout.version:
                continue  # it ran this version before its wave: nothing to give back
            if earlier is None:
                kept.append(device_id)
            else:
                by_target[(wave.index, earlier)].append(device_id)
    made, publish = [], []
    for (index, version), ids in sorted(by_target.items()):
        release = await ctx.storage.get_release(rollout.model, version)
        record, signed = await prepare_deployment(
            ctx, release, [devices[i] for i in ids], Target(devices=tuple(ids)),
            created_by=actor_of(rollout), kind="rollback", deadline_s=policy.deadline,
        )  # fmt: skip
        made.append(RolloutDeployment(record, signed, index))
        publish.append((release, signed))
    back = sum(len(ids) for ids in by_target.values())
    reason = f"{back} device(s) get their previous version back" + (
        f"; {len(kept)} had none and keep version {rollout.version}: {', '.join(kept[:50])}"
        if kept
        else ""
    )
    numbers = {
        "given_back": {i: v for (_, v), ids in by_target.items() for i in ids},
        "kept": kept[:MAX_NAMED_DEVICES],
        "deployments": len(made),
    }
    return made, publish, (reason, numbers)


def _version(entry: Any) -> int | None:
    version = entry.get("version") if isinstance(entry, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None
