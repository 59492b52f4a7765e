"""The fleet statistics' arithmetic on numbers worked out by hand (or with a second method)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from model_registry.statistics.counts import CountsMismatchError, is_counts, merge_counts
from model_registry.statistics.distributions import max_cdf_gap, psi, psi_noise, shares, smoothed
from model_registry.statistics.proportions import (
    mean_interval,
    required_sample_size,
    two_proportion_z_test,
    wilson_interval,
)


def test_psi_of_equal_distributions_is_zero_whatever_the_scale() -> None:
    assert psi([1, 2, 3], [10, 20, 30]) == pytest.approx(0.0, abs=1e-12)


def test_psi_on_known_numbers() -> None:
    # Shares (0.5, 0.5) against (0.25, 0.75):
    # (0.25-0.5)*ln(0.25/0.5) + (0.75-0.5)*ln(0.75/0.5) = 0.25*ln 2 + 0.25*ln 1.5
    expected = 0.25 * math.log(2) + 0.25 * math.log(1.5)
    assert psi([50, 50], [25, 75]) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.274653, abs=1e-6)


def test_psi_is_symmetric_and_grows_with_the_shift() -> None:
    base = [10, 20, 40, 20, 10]
    small, large = [12, 22, 36, 20, 10], [40, 30, 20, 7, 3]
    assert psi(base, small) == pytest.approx(psi(small, base), rel=1e-12)
    assert 0 < psi(base, small) < 0.1
    assert psi(base, large) > 0.25


def test_an_empty_bin_is_floored_so_psi_stays_finite() -> None:
    value = psi([50, 50], [100, 0])
    e, o = [0.5, 0.5], [1 / (1 + 1e-4), 1e-4 / (1 + 1e-4)]
    by_hand = sum((oi - ei) * math.log(oi / ei) for ei, oi in zip(e, o, strict=True))
    assert value == pytest.approx(by_hand, rel=1e-9)
    assert math.isfinite(value)


@pytest.mark.parametrize(
    ("expected", "observed", "message"),
    [
        ([1, 2], [1, 2, 3], "2 expected bins against 3"),
        ([0, 0], [1, 1], "zero"),
        ([1, -1], [1, 1], "non-negative"),
        ([], [], "0 expected bins"),
    ],
)
def test_psi_refuses_what_is_not_two_distributions(
    expected: list[float], observed: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        psi(expected, observed)


def test_psi_noise_is_what_sampling_alone_gives() -> None:
    # The chi-square quantiles scaled by 1/n1 + 1/n2: 13.82 for 2 degrees of freedom at 99.9%,
    # 6.63 for 1 at 99% (the Wilson-Hilferty approximation is within a few percent).
    assert psi_noise(3, 50, 50) == pytest.approx(13.82 * 0.04, rel=0.03)
    assert psi_noise(2, 100, 400, confidence=0.99) == pytest.approx(6.63 * 0.0125, rel=0.03)
    # Two samples of one distribution exceed it about as often as the confidence says.
    rng = np.random.default_rng(3)
    p, n1, n2 = [0.38, 0.32, 0.30], 40, 200
    values = [psi(rng.multinomial(n1, p).tolist(), rng.multinomial(n2, p).tolist())
              for _ in range(2000)]  # fmt: skip
    above = sum(v > psi_noise(3, n1, n2, confidence=0.95) for v in values) / len(values)
    assert 0.02 < above < 0.09
    with pytest.raises(ValueError, match="2 bins or more"):
        psi_noise(1, 10, 10)


def test_smoothed_counts_keep_a_class_missed_by_chance_from_weighing_like_a_vanished_one() -> None:
    before = [190, 160, 150]
    assert psi(before, [6, 4, 0]) > 2.4  # the empty bin floored at 1e-4
    assert psi(smoothed(before), smoothed([6, 4, 0])) < 0.6
    assert psi(smoothed(before), smoothed([300, 0, 0])) > 2.5  # a class that did vanish
    assert smoothed([0, 2], pseudo=1) == [1, 3]


def test_max_cdf_gap() -> None:
    # CDFs (0.5, 1) and (0.25, 1): the gap is 0.25 at the first bin.
    assert max_cdf_gap([1, 1], [1, 3]) == pytest.approx(0.25)
    assert max_cdf_gap([1, 0, 0], [0, 0, 1]) == pytest.approx(1.0)
    assert shares([1, 3]) == [0.25, 0.75]


def test_wilson_interval_on_known_numbers() -> None:
    # 8 of 10 at 95 %: the textbook interval is (0.4902, 0.9433).
    low, high = wilson_interval(8, 10)
    assert (low, high) == (pytest.approx(0.4902, abs=1e-4), pytest.approx(0.9433, abs=1e-4))
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(0, 50)
    assert low == 0.0
    assert 0 < high < 0.1


def test_two_proportion_z_test_on_known_numbers() -> None:
    # 45/100 against 30/100: pooled 0.375, se = sqrt(.375*.625*.02) = 0.0684653, z = 2.19089.
    z, p = two_proportion_z_test(45, 100, 30, 100)
    assert z == pytest.approx(2.19089, abs=1e-5)
    assert p == pytest.approx(0.028459, abs=1e-5)
    z2, p2 = two_proportion_z_test(30, 100, 45, 100)
    assert (z2, p2) == (pytest.approx(-z), pytest.approx(p))
    assert two_proportion_z_test(0, 10, 0, 10) == (0.0, 1.0)
    assert two_proportion_z_test(5, 10, 0, 0) == (0.0, 1.0)


def test_required_sample_size_matches_the_usual_formula() -> None:
    # 10 % -> 15 %, alpha 0.05 two-sided, power 0.8: the standard answer is 686 per arm.
    assert required_sample_size(0.10, 0.05) == 686
    assert required_sample_size(0.10, 0.10) < required_sample_size(0.10, 0.05)
    with pytest.raises(ValueError, match="min_detectable_effect"):
        required_sample_size(0.5, 0)


def test_mean_interval() -> None:
    low, high = mean_interval(10.0, 2.0, 16)
    assert (low, high) == (pytest.approx(10 - 1.959964 * 0.5), pytest.approx(10 + 1.959964 * 0.5))


def test_counts_merge_by_summing_and_refuse_other_shapes() -> None:
    a = {"predictions": {"output": "label", "classes": {"0": 3, "1": 1}}, "bins": {"X": [[1, 2]]}}
    b = {"predictions": {"output": "label", "classes": {"1": 4, "2": 5}}, "bins": {"X": [[3, 4]]}}
    assert merge_counts(a, b) == {
        "predictions": {"output": "label", "classes": {"0": 3, "1": 5, "2": 5}},
        "bins": {"X": [[4, 6]]},
    }
    assert a["predictions"]["classes"] == {"0": 3, "1": 1}  # inputs untouched
    with pytest.raises(CountsMismatchError, match=r"bins"):
        merge_counts({"bins": {"X": [[1, 2]]}}, {"bins": {"X": [[1, 2, 3]]}})
    with pytest.raises(CountsMismatchError, match="output"):
        merge_counts({"output": "a"}, {"output": "b"})


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ({"a": [1, 2.5]}, True),
        ({"a": -1}, False),
        ({"a": True}, False),
        ({"a": float("inf")}, False),
        ({"a": float("nan")}, False),
        ({"a": None}, False),
        ({"a": "x" * 257}, False),
        ({"a": [[[[[[[[1]]]]]]]]}, False),
    ],
)
def test_only_counts_are_counts(value: object, ok: bool) -> None:
    assert is_counts(value) is ok
