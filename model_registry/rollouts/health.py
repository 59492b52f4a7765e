"""The model-health gates: the new version against the one it replaced, on the same devices.

Small policies on the fleet statistics (model_registry/statistics). For the current wave's
devices, the new version's window runs from the wave's start to now (its soak, and the
probation before it); the replaced version's window is the `baseline` before the wave started,
up to the moment its devices settled (the old version served until each swap). Each gate is
judged only once both windows hold `min_requests` answers; before, it "waits", and so does the
wave's soak (unless the policy says `require_traffic = false`: then it passes not judged, and the
decision says so). A gate that cannot apply (no earlier version on the devices, no predictions
reported by both versions) is not judged and does not hold the wave. The gates:

* `error_rate`: the new version's share of 5xx answers above `max_error_rate`;
* `latency`: the new version's p99 over the replaced one's (at least `latency_floor_ms`) above
  `max_latency_ratio`;
* `prediction_shift`: the PSI of the new version's predicted classes (or output bins) against
  the replaced one's above `max_psi`, and above what chance alone gives on that many
  predictions (`statistics.distributions.psi_noise`, 99.9%): a shift past the limit but within
  chance waits for more answers. Counts get half a count per bin first (`smoothed`), so a class
  a small sample missed by chance does not weigh as if it had vanished. Judged only when both
  versions report `predictions`.

A verdict names the devices where the gate's own number is past its limit.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from model_registry.rollouts.gates import Verdict
from model_registry.rollouts.policy import RolloutPolicy
from model_registry.statistics.distributions import psi, psi_noise, smoothed
from model_registry.statistics.window import VersionWindow, aggregate
from model_registry.storage import RolloutRecord, RolloutWave, Storage
from model_registry.storage.base import VersionPoint

ERROR_RATE, LATENCY, PREDICTIONS = "error_rate", "latency", "prediction_shift"


async def verdicts(
    storage: Storage,
    rollout: RolloutRecord,
    policy: RolloutPolicy,
    wave: RolloutWave,
    now: datetime,
) -> list[Verdict]:
    """The health gates' verdicts for the current wave so far."""
    old_version = _replaced(rollout, wave)
    if not wave.devices or old_version is None:
        why = "no devices" if not wave.devices else "no earlier version on these devices"
        return [Verdict(g, None, None, _limit(g, policy), detail=why) for g in _GATES]
    since = wave.started - timedelta(seconds=policy.baseline)
    points = await storage.version_points(rollout.model, since, None, None, list(wave.devices))
    settled = wave.settled or now
    new = [p for p in points if p.version == rollout.version and p.at >= wave.started]
    old = [p for p in points if p.version == old_version and p.at <= settled]
    return judge(new, old, policy)


def judge(
    new: Sequence[VersionPoint], old: Sequence[VersionPoint], policy: RolloutPolicy
) -> list[Verdict]:
    """The three verdicts from the new version's points and the replaced version's."""
    new_window, old_window = aggregate(new), aggregate(old)
    new_by_device = _by_device(new)
    old_by_device = _by_device(old)
    return [
        error_rate(new_window, new_by_device, policy),
        latency(new_window, old_window, new_by_device, old_by_device, policy),
        prediction_shift(new_window, old_window, new_by_device, old_by_device, policy),
    ]


def error_rate(
    new: VersionWindow | None, per_device: dict[str, VersionWindow], policy: RolloutPolicy
) -> Verdict:
    """The new version's 5xx share against `max_error_rate`."""
    limit = policy.max_error_rate
    if new is None or new.requests < policy.min_requests:
        return _not_judged(ERROR_RATE, limit, new, None, policy)
    rate = new.server_error_rate or 0.0
    bad = sorted(d for d, w in per_device.items() if (w.server_error_rate or 0.0) > limit)
    detail = f"{new.server_errors} of {new.requests} answers were 5xx"
    return Verdict(ERROR_RATE, rate <= limit, rate, limit, tuple(bad), detail)


def latency(
    new: VersionWindow | None,
    old: VersionWindow | None,
    new_by_device: dict[str, VersionWindow],
    old_by_device: dict[str, VersionWindow],
    policy: RolloutPolicy,
) -> Verdict:
    """The new version's p99 over the replaced one's against `max_latency_ratio`."""
    limit = policy.max_latency_ratio
    if not _enough(new, old, policy) or new is None or old is None:
        return _not_judged(LATENCY, limit, new, old, policy)
    ratio = _ratio(new, old, policy)
    if ratio is None:
        return Verdict(LATENCY, None, None, limit, detail="no latency was reported")
    bad = sorted(
        d
        for d, w in new_by_device.items()
        if d in old_by_device and (r := _ratio(w, old_by_device[d], policy)) and r > limit
    )
    detail = (
        f"p99 {new.latency_p99_ms:.3g} ms against {old.latency_p99_ms:.3g} ms "
        f"(floor {policy.latency_floor_ms:g} ms) of version {old.version}"
    )
    return Verdict(LATENCY, ratio <= limit, ratio, limit, tuple(bad), detail)


def prediction_shift(
    new: VersionWindow | None,
    old: VersionWindow | None,
    new_by_device: dict[str, VersionWindow],
    old_by_device: dict[str, VersionWindow],
    policy: RolloutPolicy,
) -> Verdict:
    """The PSI of the predicted classes against `max_psi`."""
    limit = policy.max_psi
    if not _enough(new, old, policy) or new is None or old is None:
        return _not_judged(PREDICTIONS, limit, new, old, policy)
    pair = _distributions(new.detail, old.detail)
    if pair is None:
        detail = "the versions do not both report predicted classes or output bins"
        return Verdict(PREDICTIONS, None, None, limit, detail=detail)
    shift, noise = _shift(pair)
    bad = []
    for device, window in sorted(new_by_device.items()):
        before = old_by_device.get(device)
        mine = _distributions(window.detail, before.detail) if before is not None else None
        if mine is not None and (own := _shift(mine))[0] > max(limit, own[1]):
            bad.append(device)
    detail = (
        f"predicted {_top(pair[0])} against {_top(pair[1])} of version {old.version}; "
        f"chance alone reaches {noise:.3g} on {sum(pair[0]):g} and {sum(pair[1]):g} predictions"
    )
    if limit < shift <= noise:  # past the limit, but no more than chance gives: more answers
        return Verdict(PREDICTIONS, None, shift, limit, tuple(bad), detail, waits=True)
    return Verdict(PREDICTIONS, shift <= limit, shift, limit, tuple(bad), detail)


def _shift(pair: tuple[list[float], list[float]]) -> tuple[float, float]:
    """The PSI of new against old, and the PSI sampling alone stays below (`psi_noise`)."""
    new, old = pair
    return psi(smoothed(old), smoothed(new)), psi_noise(len(new), sum(old), sum(new))


_GATES = (ERROR_RATE, LATENCY, PREDICTIONS)


def _limit(gate: str, policy: RolloutPolicy) -> float:
    return {
        ERROR_RATE: policy.max_error_rate,
        LATENCY: policy.max_latency_ratio,
        PREDICTIONS: policy.max_psi,
    }[gate]


def _replaced(rollout: RolloutRecord, wave: RolloutWave) -> int | None:
    """The version most of the wave's devices ran before it (the one its gates compare with)."""
    versions = Counter(
        v
        for d in wave.devices
        if (v := rollout.previous.get(d)) is not None and v != rollout.version
    )
    return versions.most_common(1)[0][0] if versions else None


def _by_device(points: Sequence[VersionPoint]) -> dict[str, VersionWindow]:
    groups: dict[str, list[VersionPoint]] = defaultdict(list)
    for p in points:
        groups[p.device_id].append(p)
    windows = {d: aggregate(ps) for d, ps in groups.items()}
    return {d: w for d, w in windows.items() if w is not None}


def _enough(new: VersionWindow | None, old: VersionWindow | None, policy: RolloutPolicy) -> bool:
    return all(w is not None and w.requests >= policy.min_requests for w in (new, old))


def _not_judged(
    gate: str,
    limit: float,
    new: VersionWindow | None,
    old: VersionWindow | None,
    policy: RolloutPolicy,
) -> Verdict:
    counts = f"{new.requests if new else 0} new"
    if gate != ERROR_RATE:
        counts += f", {old.requests if old else 0} replaced"
    detail = f"{counts} answers, fewer than {policy.min_requests}"
    return Verdict(gate, None, None, limit, detail=detail, waits=True)


def _ratio(new: VersionWindow, old: VersionWindow, policy: RolloutPolicy) -> float | None:
    if new.latency_p99_ms is None or old.latency_p99_ms is None:
        return None
    return new.latency_p99_ms / max(old.latency_p99_ms, policy.latency_floor_ms, 1e-9)


def _distributions(
    new: dict[str, Any], old: dict[str, Any]
) -> tuple[list[float], list[float]] | None:
    """(new counts, old counts) over the same bins, or None when they cannot be compared."""
    a, b = new.get("predictions"), old.get("predictions")
    if not isinstance(a, dict) or not isinstance(b, dict):
        return None
    classes_a, classes_b = a.get("classes"), b.get("classes")
    if isinstance(classes_a, dict) and isinstance(classes_b, dict):
        keys = sorted(set(classes_a) | set(classes_b))
        pair = [[_count(c.get(k)) for k in keys] for c in (classes_a, classes_b)]
    else:
        bins_a, bins_b = a.get("bins"), b.get("bins")
        if not (isinstance(bins_a, list) and isinstance(bins_b, list)) or len(bins_a) != len(
            bins_b
        ):
            return None
        pair = [[_count(v) for v in bins] for bins in (bins_a, bins_b)]
    if not pair[0] or sum(pair[0]) <= 0 or sum(pair[1]) <= 0:
        return None
    return pair[0], pair[1]


def _count(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def _top(counts: Sequence[float]) -> str:
    total = sum(counts)
    share = max(counts) / total if total else 0.0
    return f"{len(counts)} bins, the largest {share:.0%}"
