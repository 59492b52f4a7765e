"""Comparing two distributions over the same bins: PSI and the largest CDF gap.

Drift compares what devices saw with the release's reference profile; rollouts compare the
predicted classes of a new version with those of the version it replaced. Both give counts or
shares over the same bins, in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from statistics import NormalDist

# An empty bin would make PSI infinite; it counts as this share instead (before renormalizing),
# the usual practice, so one empty bin weighs heavily but finitely.
SHARE_FLOOR = 1e-4


def shares(counts: Sequence[float]) -> list[float]:
    """Each count's share of the total; raises ValueError for a negative count or an empty total."""
    if any(c < 0 or not math.isfinite(c) for c in counts):
        raise ValueError("counts must be finite and non-negative")
    total = math.fsum(counts)
    if total <= 0:
        raise ValueError("counts sum to zero")
    return [c / total for c in counts]


def psi(expected: Sequence[float], observed: Sequence[float], floor: float = SHARE_FLOOR) -> float:
    """Population stability index of `observed` against `expected` (counts or shares).

    PSI = sum over bins of (o - e) * ln(o / e), with o and e the shares per bin, each floored at
    `floor` and renormalized. 0 for equal distributions; by convention below 0.1 is stable,
    0.1 to 0.25 a moderate shift and above 0.25 a large one.
    """
    e, o = _floored(expected, observed, floor)
    return math.fsum((oi - ei) * math.log(oi / ei) for ei, oi in zip(e, o, strict=True))


PSEUDO_COUNT = 0.5  # Jeffreys' prior: half an observation in every bin


def smoothed(counts: Sequence[float], pseudo: float = PSEUDO_COUNT) -> list[float]:
    """`counts` with `pseudo` added to every bin, before a PSI of small samples.

    A bin a small sample left empty by chance would otherwise count as the floor's 1e-4 and
    make the PSI several units; half a count keeps it finite and modest (10 answers, one class
    missing: about 0.5 instead of 2.5), while a class that really vanished from hundreds of
    answers still weighs heavily.
    """
    if pseudo < 0:
        raise ValueError("pseudo must not be negative")
    return [c + pseudo for c in counts]


def psi_noise(bins: int, n_expected: float, n_observed: float, confidence: float = 0.999) -> float:
    """The PSI two samples of these sizes from one same distribution stay below with `confidence`.

    With no shift at all, PSI is about (1/n_expected + 1/n_observed) times a chi-square variable
    with `bins - 1` degrees of freedom (for small differences it is Pearson's two-sample
    statistic, scaled); the quantile is the Wilson-Hilferty approximation. A PSI below this is
    what sampling alone gives: 3 classes and 30 answers a side reach 0.6 one time in a hundred,
    so a gate on PSI needs its shift to be above this as well as above its limit.
    """
    if bins < 2 or n_expected <= 0 or n_observed <= 0 or not 0.5 < confidence < 1:
        raise ValueError("need 2 bins or more, positive sample sizes, a confidence in (0.5, 1)")
    k = bins - 1
    z = NormalDist().inv_cdf(confidence)
    quantile = k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3
    return quantile * (1 / n_expected + 1 / n_observed)


def max_cdf_gap(expected: Sequence[float], observed: Sequence[float]) -> float:
    """The largest gap between the two cumulative distributions (Kolmogorov-Smirnov's D on bins)."""
    _same_length(expected, observed)
    e, o = shares(expected), shares(observed)
    gap = ce = co = 0.0
    for ei, oi in zip(e, o, strict=True):
        ce, co = ce + ei, co + oi
        gap = max(gap, abs(ce - co))
    return gap


def _floored(
    expected: Sequence[float], observed: Sequence[float], floor: float
) -> tuple[list[float], list[float]]:
    _same_length(expected, observed)
    if not 0 < floor < 1:
        raise ValueError("floor must be between 0 and 1")
    result = []
    for values in (shares(expected), shares(observed)):
        lifted = [max(v, floor) for v in values]
        total = math.fsum(lifted)
        result.append([v / total for v in lifted])
    return result[0], result[1]


def _same_length(expected: Sequence[float], observed: Sequence[float]) -> None:
    if len(expected) != len(observed) or not expected:
        raise ValueError(f"{len(expected)} expected bins against {len(observed)} observed")
