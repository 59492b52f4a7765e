"""Which variant answers a request: by a stable key when the request has one, else at random.

The key is hashed with the experiment's id, so one key always reaches the same variant on
every device of that experiment (a user sees one model, whatever device serves them), and a
new experiment reshuffles the keys.
"""

from __future__ import annotations

import hashlib
import random

BUCKETS = 10_000  # a split percent is a whole number; a finer hash keeps it unbiased
MAX_KEY_LENGTH = 256


def bucket(experiment_id: int, key: str) -> int:
    """The key's bucket in 0 .. BUCKETS-1, the same on every device."""
    digest = hashlib.sha256(f"{experiment_id}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


def to_treatment(
    experiment_id: int, split_percent: int, key: str | None, rng: random.Random
) -> bool:
    """Whether the treatment answers: a key's bucket, or a random draw, below the split."""
    if key is None:
        return rng.randrange(BUCKETS) < split_percent * BUCKETS // 100
    return bucket(experiment_id, key) < split_percent * BUCKETS // 100
