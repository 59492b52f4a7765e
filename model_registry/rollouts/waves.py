"""Which devices each wave of a rollout moves: a stable hash of the device id decides.

The group's devices are ordered by the SHA-256 of their id (canaries first, when named), and
wave k reaches the first ceil(n * steps[k] / 100) of that order. The order depends on the id
alone, so a device in the 5% wave is also in the 25% one, and a rerun picks the same devices;
a device added to the group later lands where its hash puts it. Each wave moves the devices of
its reach that no earlier wave moved, and at least one while any is left.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Iterable, Sequence


def device_rank(device_id: str) -> tuple[int, str]:
    """Where `device_id` falls in the stable order (the id breaks a tie no hash will have)."""
    digest = hashlib.sha256(device_id.encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big"), device_id


def ordered(device_ids: Iterable[str], canary: Sequence[str] = ()) -> list[str]:
    """The group in rollout order: the canaries as named, then the rest by hash."""
    first = list(dict.fromkeys(canary))
    chosen = set(first)
    rest = sorted((d for d in set(device_ids) if d not in chosen), key=device_rank)
    return [*first, *rest]


def plan(steps: Sequence[float], canary: Sequence[str]) -> list[float]:
    """The waves' cumulative reach in percent; 0 marks the wave of the named canaries.

    Named canaries take the first step's place; when the only step is 100, they go first as a
    wave of their own.
    """
    if not canary:
        return list(steps)
    return [0.0, *(steps[1:] if len(steps) > 1 else steps)]


def wave_devices(
    group: Collection[str],
    steps: Sequence[float],
    canary: Sequence[str],
    index: int,
    moved: Collection[str],
) -> tuple[tuple[str, ...], float]:
    """The devices wave `index` moves (none already `moved`) and the percent it reaches."""
    reach = plan(steps, canary)
    order = ordered(group, canary)
    left = [d for d in order if d not in moved]
    if reach[index] == 0.0:  # the canary wave: exactly the named devices
        devices = tuple(d for d in canary if d not in moved)
        return devices, _share(len(canary), len(order))
    count = math.ceil(len(order) * reach[index] / 100 - 1e-9)
    taken = [d for d in order[:count] if d not in moved]
    if not taken and left and index == len(reach) - 1:
        taken = left  # the last wave reaches every device, whatever joined meanwhile
    elif not taken and left:
        taken = left[:1]  # at least one device per wave while any is left
    return tuple(taken), reach[index]


def _share(count: int, total: int) -> float:
    return round(100 * count / total, 2) if total else 0.0
