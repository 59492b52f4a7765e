"""The rollout controller: one pass moves every active rollout on by what its devices reported.

It runs as the duty `rollouts` (model_registry/services/duties.py), so one registry of those
sharing a database drives rollouts at a time. It keeps nothing in memory: each pass reads each
rollout from storage and stores every change with the deployments it makes, in one transaction
that applies only if the rollout is still at the step it read (`Storage.update_rollout`). A
registry killed anywhere therefore resumes where the stored rollout is: a wave's deployment is
stored with the wave, so no wave starts twice and none is skipped.

A pass, for a rollout that is running or paused:
1. no wave yet, or the last one passed: start the next (running only);
2. the install gate over every device moved so far: broken -> halt;
3. the wave not settled yet: once `success_percent` of its devices activated, its soak begins;
4. the health gates over the soak: one broken -> halt;
5. the soak over (and, with `require_traffic`, every health gate judged on `min_requests`
   answers of both versions): the wave passed; the rollout completes after the last one, waits for
   `rollout resume` with `manual`, or starts the next wave.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import timedelta

from model_registry.errors import ConflictError, RegistryError
from model_registry.rollouts import health
from model_registry.rollouts.changes import CONTROLLER, halt, start_wave, store
from model_registry.rollouts.gates import Verdict, install_gate, settled
from model_registry.rollouts.policy import parse_policy
from model_registry.rollouts.waves import plan
from model_registry.services.context import RegistryContext
from model_registry.services.duties import duty_loop
from model_registry.services.fleet import DeviceProgress, deployment_progress
from model_registry.storage import RolloutDecision, RolloutRecord

log = logging.getLogger(__name__)
ROLLOUT_DUTY = "rollouts"


async def rollout_loop(ctx: RegistryContext) -> None:
    """Run `run_rollouts` every `[rollouts] check_interval_s`, on one registry at a time."""

    async def one_pass() -> None:
        await run_rollouts(ctx)

    interval = ctx.config.rollouts.check_interval_s
    await duty_loop(ctx.storage, ROLLOUT_DUTY, one_pass, interval, retry_s=max(interval, 1.0))


async def run_rollouts(ctx: RegistryContext) -> None:
    """One pass over every active rollout."""
    for rollout in await ctx.storage.rollouts(active=True):
        try:
            await advance(ctx, rollout)
        except ConflictError as e:  # changed meanwhile (a pause, another replica): next pass
            log.info("rollout %d: %s", rollout.rollout_id, e)
        except RegistryError as e:  # one rollout's trouble must not stall the others
            log.warning("rollout %d: could not move on: %s", rollout.rollout_id, e)


async def advance(ctx: RegistryContext, rollout: RolloutRecord) -> RolloutRecord:
    """Move one rollout on as far as its devices' reports allow; return it as stored."""
    if rollout.state not in ("running", "paused"):
        return rollout
    policy = parse_policy(rollout.policy)
    waves = plan(policy.steps, policy.canary)
    if not rollout.waves or rollout.waves[-1].passed is not None:
        if rollout.state != "running" or len(rollout.waves) >= len(waves):
            return rollout
        rollout = await start_wave(ctx, rollout, policy, CONTROLLER)
    return await _judge(ctx, rollout, last=len(rollout.waves) >= len(waves))


async def _judge(ctx: RegistryContext, rollout: RolloutRecord, *, last: bool) -> RolloutRecord:
    """Steps 2 to 5 for the rollout's current wave."""
    policy = parse_policy(rollout.policy)
    wave = rollout.waves[-1]
    moved, current = await _progress(ctx, rollout)
    install = install_gate(moved, policy)
    if install.broken:
        return await halt(ctx, rollout, policy, install, CONTROLLER)
    now = ctx.clock()
    if wave.settled is None:
        enough = settled(current, len(wave.devices), policy)
        if not enough.held:
            return rollout
        decision = RolloutDecision(
            now, CONTROLLER, "wave_settled",
            f"wave {wave.index + 1}: {enough.detail} (at least {policy.success_percent:g}% "
            f"needed); the soak of {policy.soak:g} s begins",
            {"success": enough.numbers(), "install": install.numbers()},
        )  # fmt: skip
        waves_now = (*rollout.waves[:-1], replace(wave, settled=now))
        return await store(ctx, replace(rollout, waves=waves_now, updated=now), [decision])
    verdicts = await health.verdicts(ctx.storage, rollout, policy, wave, now)
    for verdict in verdicts:
        if verdict.broken:
            return await halt(ctx, rollout, policy, verdict, CONTROLLER)
    soaking = now - wave.settled < timedelta(seconds=policy.soak)
    # With require_traffic the soak goes on until every health gate could judge.
    if soaking or (policy.require_traffic and any(v.waits for v in verdicts)):
        return rollout
    return await _pass_wave(ctx, rollout, [install, *verdicts], last=last)


async def _pass_wave(
    ctx: RegistryContext, rollout: RolloutRecord, verdicts: list[Verdict], *, last: bool
) -> RolloutRecord:
    """The soak is over with every gate held: the wave passed, and what comes next."""
    policy = parse_policy(rollout.policy)
    now = ctx.clock()
    wave = rollout.waves[-1]
    judged = "; ".join(
        f"{v.gate} {'held' if v.held else 'not judged'} ({v.detail})" for v in verdicts
    )
    decisions = [
        RolloutDecision(
            now, CONTROLLER, "wave_passed",
            f"wave {wave.index + 1} passed its soak of {policy.soak:g} s: {judged}",
            {"gates": [v.numbers() for v in verdicts]},
        )
    ]  # fmt: skip
    state = rollout.state
    if last:
        state = "completed"
        decisions.append(
            RolloutDecision(
                now, CONTROLLER, "completed",
                f"every wave passed: {len(rollout.previous)} device(s) run version "
                f"{rollout.version}",
            )
        )  # fmt: skip
    elif policy.manual and state == "running":
        state = "waiting"
        decisions.append(
            RolloutDecision(
                now, CONTROLLER, "waiting",
                f"manual rollout: wave {wave.index + 2} waits for `model-registry rollout "
                f"resume {rollout.rollout_id}`",
            )
        )  # fmt: skip
    waves_now = (*rollout.waves[:-1], replace(wave, passed=now))
    changed = replace(rollout, waves=waves_now, state=state, updated=now)
    stored = await store(ctx, changed, decisions)
    if stored.state == "running":
        return await advance(ctx, stored)  # the next wave starts in this same pass
    return stored


async def _progress(
    ctx: RegistryContext, rollout: RolloutRecord
) -> tuple[list[DeviceProgress], list[DeviceProgress]]:
    """The progress of every moved device, and of the current wave's alone."""
    moved: list[DeviceProgress] = []
    current: list[DeviceProgress] = []
    for wave in rollout.waves:
        if wave.deployment_id is None:
            continue
        devices = list((await deployment_progress(ctx, wave.deployment_id)).devices)
        moved += devices
        if wave is rollout.waves[-1]:
            current = devices
    return moved, current
