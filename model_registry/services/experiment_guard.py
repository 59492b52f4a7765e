"""A deploy, rollback or rollout that reaches a device in a running experiment.

Its assignment pins the model without the experiment, so the device ends the experiment
there, and the experiment's record would go on counting that device. As hawkBit refuses to
assign over a running action unless forced, the registry refuses it (409, naming the
experiment and how to go on); with `force` the experiment is stopped first, on all its
devices, and its outcome says which forced change stopped it (docs/registry.md).
"""

from __future__ import annotations

from model_registry.services.context import RegistryContext
from model_registry.services.deployments import Target, resolve
from model_registry.services.experiment_overlap import conflict, overlaps, running
from model_registry.services.experiments import end_experiment


async def make_way(
    ctx: RegistryContext, model: str, target: Target, *, force: bool, actor: str, action: str
) -> None:
    """Refuse `action` (deploy, rollback, rollout) of `model` to `target` while a device of
    it is in a running experiment on the model; with `force`, stop those experiments. The
    change checks again under the state lock (experiment_overlap.py)."""
    if not await running(ctx, model):  # the common case; the change reports a bad target
        return
    targeted = [d.device_id for d in await resolve(ctx, target)]
    for experiment, reached in await overlaps(ctx, model, targeted):
        if not force:
            raise conflict(model, experiment, reached, action)
        outcome = (
            f"stopped by {actor}: a forced {action} of {model} to {target.label} reached "
            f"{len(reached)} of its devices"
        )
        await end_experiment(ctx, experiment, "stopped", outcome)
