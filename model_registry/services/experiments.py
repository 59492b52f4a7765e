"""Experiments: start one on a set of devices, judge it, promote the winner or stop it.

Starting signs each targeted device a new assignment that pins the control and attaches the
candidate (docs/protocol.md 4.4); stopping signs them the control alone. Both are stored with
the experiment in one transaction, like a deployment. Promoting returns every device to
the control and hands the winner to the rollout service (a staged rollout to the group).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from edge_protocol import AssignedModel, ExperimentSpec, Pin
from edge_protocol.fields import is_valid_name
from model_registry.errors import ConflictError, InvalidInputError
from model_registry.rollouts.policy import RolloutPolicy
from model_registry.rollouts.service import start_rollout
from model_registry.services.context import RegistryContext
from model_registry.services.deployments import (
    Target,
    announce_release,
    deploy,
    resolve,
    sign_model_entry,
)
from model_registry.services.experiment_verdict import Verdict, verdict
from model_registry.storage import (
    DeploymentRecord,
    ExperimentRecord,
    ReleaseRecord,
    RolloutRecord,
)

log = logging.getLogger(__name__)

MODES = ("split", "shadow")


@dataclass(frozen=True)
class Plan:
    """What `experiment start` asks for."""

    model: str
    control: int
    candidate: int
    mode: str  # "split" or "shadow"
    split_percent: int = 0
    name: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise InvalidInputError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.mode == "split" and not 1 <= self.split_percent <= 99:
            raise InvalidInputError(
                f"split must be a whole percent from 1 to 99, not {self.split_percent}"
            )
        if self.mode == "shadow" and self.split_percent:
            raise InvalidInputError("a shadow answers no request: give no split with it")
        if self.control == self.candidate:
            raise InvalidInputError(
                f"the control and the {self._role} are both version {self.control}"
            )
        if self.name is not None and not is_valid_name(self.name):
            raise InvalidInputError(
                f"experiment name {self.name!r} is not valid (letters, digits, '.', '_', '-')"
            )

    @property
    def _role(self) -> str:
        return "treatment" if self.mode == "split" else "shadow"


async def start(
    ctx: RegistryContext, plan: Plan, target: Target, *, created_by: str
) -> ExperimentRecord:
    """Start `plan` on the targeted devices and publish their assignments."""
    control = await ctx.storage.get_release(plan.model, plan.control)
    candidate = await ctx.storage.get_release(plan.model, plan.candidate)
    ctx.require_broker("no experiment was started")
    async with ctx.state_lock:
        devices = await resolve(ctx, target)
        running = [e for e in await ctx.storage.experiments(plan.model) if e.status == "running"]
        targeted = {d.device_id for d in devices}
        for other in running:
            overlap = sorted(targeted & set(other.device_ids))
            if overlap:
                raise ConflictError(
                    f"device {overlap[0]!r} is in experiment {other.experiment_id} on "
                    f"{plan.model!r} already; stop it first (experiment stop "
                    f"{other.experiment_id})"
                )
        now = ctx.clock().replace(microsecond=0)
        name = plan.name or f"{plan.model}-v{plan.control}-vs-v{plan.candidate}"
        record = ExperimentRecord(
            experiment_id=0, name=name, model=plan.model, mode=plan.mode,
            control=plan.control, candidate=plan.candidate, split_percent=plan.split_percent,
            target_kind=target.kind, target=target.label,
            device_ids=tuple(d.device_id for d in devices), created=now, created_by=created_by,
        )  # fmt: skip
        # The signed assignments carry the experiment's id, which storing it gives: the
        # record comes first, and if the assignments cannot follow it is ended at once.
        experiment_id = await ctx.storage.add_experiment(record)
        entry = _entry(experiment_id, name, plan, control, candidate)
        try:
            signed = await sign_model_entry(ctx, devices, plan.model, entry, now)
            await ctx.storage.set_assignments(signed)
        except Exception as e:
            await ctx.storage.end_experiment(experiment_id, "stopped", now, f"not started: {e}")
            raise
        for release in (control, candidate):
            await announce_release(ctx, release)
        if ctx.publisher is not None:
            await ctx.publisher.publish_assignments({u.device_id: u.envelope for u in signed})
    log.info("experiment %d (%s) started on %d devices", experiment_id, name, len(devices))
    return await ctx.storage.get_experiment(experiment_id)


def _entry(
    experiment_id: int,
    name: str,
    plan: Plan,
    control: ReleaseRecord,
    candidate: ReleaseRecord,
) -> dict[str, object]:
    spec = ExperimentSpec(
        experiment_id=experiment_id,
        name=name,
        mode=plan.mode,
        candidate=Pin(candidate.version, candidate.sha256, candidate.size),
        split_percent=plan.split_percent,
    )
    return AssignedModel(control.version, control.sha256, control.size, experiment=spec).to_dict()


async def status(ctx: RegistryContext, experiment_id: int) -> tuple[ExperimentRecord, Verdict]:
    """The experiment and its verdict so far."""
    record = await ctx.storage.get_experiment(experiment_id)
    return record, await verdict(ctx.storage, record, ctx.config.experiments)


async def stop(ctx: RegistryContext, experiment_id: int, *, stopped_by: str) -> ExperimentRecord:
    """Return every device of the experiment to the control alone."""
    record = await ctx.storage.get_experiment(experiment_id)
    _require_running(record)
    ctx.require_broker("the experiment was not stopped")
    return await end_experiment(ctx, record, "stopped", f"stopped by {stopped_by}")


async def promote(
    ctx: RegistryContext, experiment_id: int, *, promoted_by: str
) -> tuple[ExperimentRecord, DeploymentRecord | None, RolloutRecord | None]:
    """Roll out the winner. ConflictError while there is none.

    Every device first returns to the control (the experiment ends), then a winning candidate
    goes out as a staged rollout to the experiment's group (model_registry/rollouts), or, for
    an experiment on a list of devices (rollouts move groups), as one deployment to them. A
    control that wins is simply kept.
    """
    record, judged = await status(ctx, experiment_id)
    _require_running(record)
    if judged.winner is None:
        raise ConflictError(f"experiment {experiment_id} has no winner yet: {judged.sentence}")
    ctx.require_broker("nothing was promoted")
    winner = judged.winner
    if winner == record.control:
        return (
            await end_experiment(ctx, record, "promoted", f"control v{record.control} kept"),
            None,
            None,
        )
    if record.target_kind == "group":
        outcome = f"v{winner} promoted: a staged rollout to group {record.target}"
        ended = await end_experiment(ctx, record, "promoted", outcome)
        rollout = await start_rollout(
            ctx, record.model, winner, record.target, RolloutPolicy(), created_by=promoted_by
        )
        return ended, None, rollout
    ended = await end_experiment(
        ctx, record, "promoted", f"v{winner} promoted: a deployment to its devices"
    )
    target = Target(devices=record.device_ids)
    deployment = await deploy(ctx, record.model, winner, target, created_by=promoted_by)
    return ended, deployment, None


async def end_experiment(
    ctx: RegistryContext, record: ExperimentRecord, status_: str, outcome: str
) -> ExperimentRecord:
    """End the experiment: every device of it gets the control alone (status_: stopped or
    promoted; `outcome` says why)."""
    control = await ctx.storage.get_release(record.model, record.control)
    entry = AssignedModel(control.version, control.sha256, control.size).to_dict()
    async with ctx.state_lock:
        devices = [d for d in await ctx.storage.devices() if d.device_id in record.device_ids]
        now = ctx.clock().replace(microsecond=0)
        signed = await sign_model_entry(ctx, devices, record.model, entry, now)
        ended = await ctx.storage.end_experiment(
            record.experiment_id, status_, now, outcome, signed
        )
        if ctx.publisher is not None:
            await ctx.publisher.publish_assignments({u.device_id: u.envelope for u in signed})
    log.info("experiment %d %s: %s", record.experiment_id, status_, outcome)
    return ended


def _require_running(record: ExperimentRecord) -> None:
    if record.status != "running":
        raise ConflictError(
            f"experiment {record.experiment_id} is {record.status} already ({record.outcome})"
        )
