"""Which targeted devices are in a running experiment on a model.

Asked twice for a deploy, a rollback or a rollout: by the API before it changes anything (to
refuse, or with `force` to stop those experiments first: experiment_guard.py), and again under
the state lock as the assignments are signed, so an experiment started in between is not
ended silently by the change (a deploy gets 409, a rollout's later wave leaves the device out).
"""

from __future__ import annotations

from collections.abc import Iterable

from model_registry.errors import ConflictError
from model_registry.services.context import RegistryContext
from model_registry.storage import ExperimentRecord


async def running(ctx: RegistryContext, model: str) -> list[ExperimentRecord]:
    """The experiments running on `model`."""
    return [e for e in await ctx.storage.experiments(model) if e.status == "running"]


async def overlaps(
    ctx: RegistryContext, model: str, device_ids: Iterable[str]
) -> list[tuple[ExperimentRecord, list[str]]]:
    """Each running experiment on `model` with the devices of `device_ids` it holds."""
    experiments = await running(ctx, model)
    if not experiments:  # the common case
        return []
    targeted = set(device_ids)
    found = [(e, sorted(targeted & set(e.device_ids))) for e in experiments]
    return [(e, reached) for e, reached in found if reached]


def conflict(
    model: str, experiment: ExperimentRecord, reached: list[str], action: str
) -> ConflictError:
    """The 409 of a change that would end `experiment` on the devices it `reached`."""
    return ConflictError(
        f"device {reached[0]!r} is in experiment {experiment.experiment_id} "
        f"({experiment.name!r}) on {model!r}: a {action} would end it there; stop it "
        f"first (model-registry experiment stop {experiment.experiment_id}) or "
        f'{action} with --force ("force": true), which stops it'
    )


async def refuse_overlap(
    ctx: RegistryContext, model: str, device_ids: Iterable[str], action: str
) -> None:
    """ConflictError when a device of `device_ids` is in a running experiment on `model`."""
    for experiment, reached in await overlaps(ctx, model, device_ids):
        raise conflict(model, experiment, reached, action)
