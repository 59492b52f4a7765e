"""A deploy, rollback or rollout that reaches a device in a running experiment.

Its assignment pins the model without the experiment, so the device ends the experiment
there, and the experiment's record would go on counting that device. As hawkBit refuses to
assign over a running action unless forced, the registry refuses it (409, naming the
experiment and how to go on); with `force` the experiment is stopped first, on all its
devices, and its outcome says which forced change stopped it (docs/registry.md).
"""

from __future__ import annotations

from model_registry.errors import ConflictError
from model_registry.services.context import RegistryContext
from model_registry.services.deployments import Target, resolve
from model_registry.services.experiments import end_experiment


async def make_way(
    ctx: RegistryContext, model: str, target: Target, *, force: bool, actor: str, action: str
) -> None:
    """Refuse `action` (deploy, rollback, rollout) of `model` to `target` while a device of
    it is in a running experiment on the model; with `force`, stop those experiments."""
    running = [e for e in await ctx.storage.experiments(model) if e.status == "running"]
    if not running:  # the common case; the change itself reports a bad model or target
        return
    targeted = {d.device_id for d in await resolve(ctx, target)}
    running = [e for e in running if targeted & set(e.device_ids)]
    for experiment in running:
        reached = sorted(targeted & set(experiment.device_ids))
        if not force:
            raise ConflictError(
                f"device {reached[0]!r} is in experiment {experiment.experiment_id} "
                f"({experiment.name!r}) on {model!r}: a {action} would end it there; stop it "
                f"first (model-registry experiment stop {experiment.experiment_id}) or "
                f'{action} with --force ("force": true), which stops it'
            )
        outcome = (
            f"stopped by {actor}: a forced {action} of {model} to {target.label} reached "
            f"{len(reached)} of its devices"
        )
        await end_experiment(ctx, experiment, "stopped", outcome)
