"""Comparing two versions' rates (accuracy, error rate): intervals, a test and sample sizes.

The two-proportion z-test with a pooled standard error, the Wilson score interval for one rate,
and the per-arm sample size for a given minimum detectable effect at a significance level and
power. The normal quantiles come from `statistics.NormalDist`, so no SciPy on the registry.
"""

from __future__ import annotations

import math
from statistics import NormalDist

_NORMAL = NormalDist()


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of a rate of `successes` out of `n`; (0, 1) when n is 0."""
    _check_counts(successes, n)
    if n == 0:
        return 0.0, 1.0
    z = _z(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def two_proportion_z_test(s1: int, n1: int, s2: int, n2: int) -> tuple[float, float]:
    """(z, two-sided p-value) for rate s1/n1 against s2/n2; z > 0 when the first is higher.

    With no variance (both rates 0 or both 1) or an empty arm, z is 0 and p is 1: no evidence.
    """
    _check_counts(s1, n1)
    _check_counts(s2, n2)
    if n1 == 0 or n2 == 0:
        return 0.0, 1.0
    pooled = (s1 + s2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 0.0, 1.0
    z = (s1 / n1 - s2 / n2) / se
    return z, 2 * (1 - _NORMAL.cdf(abs(z)))


def required_sample_size(
    p_baseline: float, min_detectable_effect: float, alpha: float = 0.05, power: float = 0.8
) -> int:
    """Samples per arm to detect a change of `min_detectable_effect` (absolute) from
    `p_baseline` with a two-sided test at `alpha` and the given power."""
    if not 0 <= p_baseline <= 1:
        raise ValueError("p_baseline must be between 0 and 1")
    if not 0 < min_detectable_effect <= 1:
        raise ValueError("min_detectable_effect must be above 0 and at most 1")
    p2 = min(1.0, max(0.0, p_baseline + min_detectable_effect))
    if p2 == p_baseline:
        p2 = max(0.0, p_baseline - min_detectable_effect)
    z_alpha, z_beta = _z(1 - alpha), _NORMAL.inv_cdf(power)
    mean = (p_baseline + p2) / 2
    numerator = (
        z_alpha * math.sqrt(2 * mean * (1 - mean))
        + z_beta * math.sqrt(p_baseline * (1 - p_baseline) + p2 * (1 - p2))
    ) ** 2
    return max(1, math.ceil(numerator / (p2 - p_baseline) ** 2))


def mean_interval(mean: float, std: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """A normal-approximation interval of a mean of `n` values with standard deviation `std`."""
    if n <= 0:
        raise ValueError("n must be positive")
    half = _z(confidence) * std / math.sqrt(n)
    return mean - half, mean + half


def _z(confidence: float) -> float:
    """The two-sided normal quantile of a confidence level (1.96 for 0.95)."""
    if not 0 < confidence < 1:
        raise ValueError("confidence must be between 0 and 1")
    return _NORMAL.inv_cdf(0.5 + confidence / 2)


def _check_counts(successes: int, n: int) -> None:
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"{successes} successes out of {n} is not a rate")


def mean_from_sums(total: float, squares: float, n: int) -> tuple[float, float]:
    """(mean, sample variance) of `n` values given their sum and sum of squares."""
    if n <= 0:
        raise ValueError("n must be positive")
    mean = total / n
    variance = max(0.0, (squares - n * mean * mean) / (n - 1)) if n > 1 else 0.0
    return mean, variance


def welch_z_test(  # noqa: PLR0917 - two means, each with its variance and count
    mean1: float, var1: float, n1: int, mean2: float, var2: float, n2: int
) -> tuple[float, float]:
    """(z, two-sided p-value) of mean1 against mean2 with Welch's unequal-variance standard
    error and the normal distribution (the large-sample Welch test; z > 0: the first higher).

    An empty arm, or no variance in either, is no evidence: z 0 and p 1.
    """
    if n1 <= 0 or n2 <= 0:
        return 0.0, 1.0
    se = math.sqrt(var1 / n1 + var2 / n2)
    if se == 0:
        return 0.0, 1.0
    z = (mean1 - mean2) / se
    return z, 2 * (1 - _NORMAL.cdf(abs(z)))
