"""The model-health gates of a rollout (built on model_registry/statistics)."""

from __future__ import annotations

from datetime import datetime

from model_registry.rollouts.gates import Verdict
from model_registry.rollouts.policy import RolloutPolicy
from model_registry.storage import RolloutRecord, RolloutWave, Storage


async def verdicts(
    storage: Storage,
    rollout: RolloutRecord,
    policy: RolloutPolicy,
    wave: RolloutWave,
    now: datetime,
) -> list[Verdict]:
    """The health gates' verdicts over the wave's soak so far."""
    return []
