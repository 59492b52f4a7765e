"""Finding a push's champion and running the champion gate on it (build/champion.py).

The champion is the model's latest version, or the one the push names as its baseline; its
stored artifact is read from the blob store and evaluated in onnxruntime off the event loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from edge_protocol import Envelope, Release
from model_registry.build import BuildResult, EvalSet
from model_registry.build.champion import (
    Champion,
    GatePolicy,
    io_difference,
    judge,
    score_champion,
    shipped_points,
    skipped,
)
from model_registry.errors import InvalidInputError, NotFoundError
from model_registry.services.context import RegistryContext
from model_registry.storage import ReleaseRecord

NOT_APPLIED = "not applied: no evaluation set was given"


def check_policy(policy: GatePolicy, eval_set: EvalSet | None) -> None:
    """Options that only mean something with an evaluation set need one."""
    if eval_set is not None:
        return
    if policy.baseline is not None:
        raise InvalidInputError("baseline compares scores on an evaluation set: give eval too")
    if policy.min_accuracy is not None:
        raise InvalidInputError("min_accuracy is a score on an evaluation set: give eval too")


async def champion_verdict(
    ctx: RegistryContext,
    name: str,
    policy: GatePolicy,
    result: BuildResult,
    eval_set: EvalSet | None,
) -> dict[str, Any]:
    """The champion gate's report fields; raises ChampionGateError when the push is refused."""
    evaluation = result.evaluation
    if eval_set is None or evaluation is None:
        return {"champion_gate": NOT_APPLIED}
    latest = await ctx.storage.latest_version(name)
    version, score = latest + 1, shipped_points(evaluation)
    record = await _champion_record(ctx, name, policy.baseline, latest)
    if record is None:
        return judge(policy, evaluation.task, version, score, None)
    io = Release.from_dict(Envelope.from_bytes(record.envelope).signed).io
    difference = io_difference(result.io, io)
    if difference is not None:
        why = f"the champion version {record.version} cannot be compared: {difference}"
        return skipped(policy, why, record.version)
    artifact = await asyncio.to_thread(ctx.blobs.read, record.sha256)
    champion = Champion(record.version, io, artifact)
    theirs = await asyncio.to_thread(score_champion, champion, eval_set, evaluation.task)
    return judge(policy, evaluation.task, version, score, (record.version, theirs))


async def _champion_record(
    ctx: RegistryContext, name: str, baseline: int | None, latest: int
) -> ReleaseRecord | None:
    if baseline is None:
        return await ctx.storage.get_release(name, latest) if latest else None
    try:
        return await ctx.storage.get_release(name, baseline)
    except NotFoundError as e:
        raise InvalidInputError(
            f"baseline version {baseline} of {name!r} does not exist (latest: {latest or 'none'})"
        ) from e
