"""An experiment's verdict: each variant's numbers with intervals, the test, a plain sentence.

A policy on top of the fleet statistics (model_registry/statistics): the windows of the
experiment's devices since it started, the `experiment` counts devices report per variant,
the Wilson interval of every rate and the two-proportion z-test of accuracy (a split with
feedback) and of the 5xx rate. docs/registry.md ("Experiments") says why this test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from model_registry.config import ExperimentConfig
from model_registry.statistics.proportions import (
    mean_from_sums,
    mean_interval,
    required_sample_size,
    two_proportion_z_test,
    welch_z_test,
    wilson_interval,
)
from model_registry.statistics.window import VersionWindow, windows_by_version
from model_registry.storage import ExperimentRecord, Storage


@dataclass(frozen=True)
class Rate:
    """`successes` out of `n`, with its 95% Wilson interval; value None when n is 0."""

    successes: int
    n: int
    low: float
    high: float

    @classmethod
    def of(cls, successes: int, n: int) -> Rate:
        """The rate and its interval (counts beyond n, from a hostile device, are capped)."""
        successes = min(max(successes, 0), n)
        low, high = wilson_interval(successes, n)
        return cls(successes, n, low, high)

    @property
    def value(self) -> float | None:
        """successes / n."""
        return self.successes / self.n if self.n else None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"value": self.value, "successes": self.successes, "n": self.n,
                "ci95": [self.low, self.high]}  # fmt: skip


@dataclass(frozen=True)
class Mean:
    """The mean of `n` values (absolute errors) with its variance and 95% normal interval."""

    value: float | None
    variance: float
    n: int

    @classmethod
    def of(cls, total: float, squares: float, n: int) -> Mean:
        """From the sums devices report (a variant with no values has value None)."""
        if n <= 0:
            return cls(None, 0.0, 0)
        mean, variance = mean_from_sums(total, max(squares, 0.0), n)
        return cls(mean, variance, n)

    def interval(self) -> tuple[float, float] | None:
        """The 95% normal interval of the mean (errors are never below 0)."""
        if self.value is None:
            return None
        low, high = mean_interval(self.value, self.variance**0.5, self.n)
        return max(0.0, low), high

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        interval = self.interval()
        return {"value": self.value, "n": self.n,
                "ci95": None if interval is None else list(interval)}  # fmt: skip


@dataclass(frozen=True)
class Variant:
    """What one variant did on the experiment's devices."""

    version: int
    role: str  # "control", "treatment" or "shadow"
    devices: int
    requests: int
    answered: int  # requests answered inside the experiment
    server_errors: Rate
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    accuracy: Rate  # labelled rows answered correctly (classifiers)
    mean_abs_error: Mean  # over the labelled rows of a regressor
    labelled_values: int
    agreement: Rate | None  # a shadow's rows with the control's label
    mean_abs_difference: float | None  # a shadow's |shadow - control| per compared value
    shadow: dict[str, int]  # runs, failed, dropped

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "version": self.version, "role": self.role, "devices": self.devices,
            "requests": self.requests, "answered": self.answered,
            "server_error_rate": self.server_errors.to_dict(),
            "latency_ms": {"p50": self.latency_p50_ms, "p99": self.latency_p99_ms},
            "accuracy": self.accuracy.to_dict(),
            "mean_abs_error": self.mean_abs_error.to_dict(),
            "labelled_values": self.labelled_values,
            "agreement": None if self.agreement is None else self.agreement.to_dict(),
            "mean_abs_difference": self.mean_abs_difference, "shadow": self.shadow,
        }  # fmt: skip


@dataclass(frozen=True)
class Test:
    """A test of one metric, treatment against control: a two-proportion z-test of a rate,
    Welch's z-test of a mean (regressors' absolute error)."""

    metric: str
    z: float
    p_value: float
    significant: bool
    better: int | None  # the version that is better, when significant
    test: str = "two-proportion z-test"

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {"metric": self.metric, "test": self.test, "z": self.z,
                "p_value": self.p_value, "significant": self.significant,
                "better": self.better}  # fmt: skip


@dataclass(frozen=True)
class Verdict:
    """The experiment's state of knowledge."""

    variants: tuple[Variant, ...]
    tests: tuple[Test, ...]
    needed_per_variant: int | None  # more labelled answers each arm needs; None: no baseline
    winner: int | None  # the version better on accuracy, when significant
    sentence: str

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "variants": [v.to_dict() for v in self.variants],
            "tests": [t.to_dict() for t in self.tests],
            "needed_per_variant": self.needed_per_variant,
            "winner": self.winner,
            "sentence": self.sentence,
        }


async def verdict(
    storage: Storage, experiment: ExperimentRecord, config: ExperimentConfig
) -> Verdict:
    """Read the experiment's windows and judge them."""
    windows = await windows_by_version(
        storage,
        experiment.model,
        experiment.created,
        experiment.ended,
        device_ids=list(experiment.device_ids),
    )
    role = "treatment" if experiment.mode == "split" else "shadow"
    control = _variant(experiment.control, "control", windows.get(experiment.control))
    candidate = _variant(experiment.candidate, role, windows.get(experiment.candidate))
    if experiment.mode == "shadow":
        return Verdict((control, candidate), (), None, None, _shadow_sentence(control, candidate))
    if not control.accuracy.n + candidate.accuracy.n and (
        control.labelled_values + candidate.labelled_values
    ):
        return _regression_verdict(control, candidate, config)
    tests = (
        _test("accuracy", control, candidate, control.accuracy, candidate.accuracy, config),
        _test("server error rate", control, candidate, control.server_errors,
              candidate.server_errors, config, lower_is_better=True),
    )  # fmt: skip
    needed = _needed(control.accuracy, candidate.accuracy, config)
    accuracy = tests[0]
    winner = accuracy.better if accuracy.significant else None
    sentence = _split_sentence(control, candidate, accuracy, needed, config)
    return Verdict((control, candidate), tests, needed, winner, sentence)


def _variant(version: int, role: str, window: VersionWindow | None) -> Variant:
    detail = (window.detail if window is not None else {}).get("experiment", {})
    detail = detail if isinstance(detail, dict) else {}
    feedback, shadow = _part(detail, "feedback"), _part(detail, "shadow")
    values = feedback.get("values", 0)
    compared = shadow.get("values", 0)
    return Variant(
        version=version,
        role=role,
        devices=0 if window is None else len(window.devices),
        requests=0 if window is None else window.requests,
        answered=_int(detail.get("answered")),
        server_errors=Rate.of(*((window.server_errors, window.requests) if window else (0, 0))),
        latency_p50_ms=None if window is None else window.latency_p50_ms,
        latency_p99_ms=None if window is None else window.latency_p99_ms,
        accuracy=Rate.of(feedback.get("correct", 0), feedback.get("labels", 0)),
        mean_abs_error=Mean.of(feedback.get("abs_error_sum", 0.0),
                               feedback.get("abs_error_sq_sum", 0.0), values),
        labelled_values=values,
        agreement=Rate.of(shadow.get("agreed", 0), shadow.get("labels", 0))
        if role == "shadow" else None,
        mean_abs_difference=shadow.get("abs_diff_sum", 0.0) / compared if compared else None,
        shadow={k: shadow.get(k, 0) for k in ("runs", "failed", "dropped")},
    )  # fmt: skip


def _part(detail: dict[str, Any], name: str) -> dict[str, Any]:
    part = detail.get(name)
    if not isinstance(part, dict):
        return {}
    return {k: v for k, v in part.items() if isinstance(v, int | float) and v >= 0}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value >= 0 else 0


def _test(  # noqa: PLR0917 - two variants and their two rates, in that order
    metric: str,
    control: Variant,
    candidate: Variant,
    a: Rate,
    b: Rate,
    config: ExperimentConfig,
    *,
    lower_is_better: bool = False,
) -> Test:
    z, p = two_proportion_z_test(b.successes, b.n, a.successes, a.n)  # z > 0: candidate higher
    significant = p < config.alpha and z != 0
    higher = candidate.version if z > 0 else control.version
    lower = control.version if z > 0 else candidate.version
    better = (lower if lower_is_better else higher) if significant else None
    return Test(metric, z, p, significant, better)


def _needed(a: Rate, b: Rate, config: ExperimentConfig) -> int | None:
    if a.value is None:
        return None
    per_arm = required_sample_size(
        a.value, config.min_detectable_effect, config.alpha, config.power
    )
    return max(0, per_arm - min(a.n, b.n))


def _split_sentence(
    control: Variant, candidate: Variant, test: Test, needed: int | None, config: ExperimentConfig
) -> str:
    labelled = control.accuracy.n + candidate.accuracy.n
    if not labelled:
        return (
            "No labelled answers yet: applications send the true labels to "
            "POST /v2/models/{model}/feedback on the devices."
        )
    p = _p(test.p_value)
    if test.significant and test.better is not None:
        best, other = (
            (candidate, control) if test.better == candidate.version else (control, candidate)
        )
        return (
            f"V{best.version} is better on accuracy: {_percent(best.accuracy)} vs "
            f"{_percent(other.accuracy)}, {p}, {labelled:,} labelled answers"
        )
    more = "" if not needed else (
        f"; about {needed:,} more per variant to detect "
        f"{config.min_detectable_effect * 100:g} points"
    )  # fmt: skip
    return (
        f"No significant difference on accuracy yet: V{candidate.version} "
        f"{_percent(candidate.accuracy)} vs V{control.version} {_percent(control.accuracy)}, "
        f"{p}, {labelled:,} labelled answers{more}"
    )


def _shadow_sentence(control: Variant, shadow: Variant) -> str:
    agreement = shadow.agreement
    dropped = shadow.shadow["dropped"]
    if agreement is None or not agreement.n:
        if shadow.mean_abs_difference is not None:
            return (
                f"V{shadow.version} differs from V{control.version} by "
                f"{shadow.mean_abs_difference:.4g} on average over "
                f"{shadow.shadow['runs']:,} inputs; {dropped:,} dropped under load"
            )
        return f"V{shadow.version} has not shadowed any input yet."
    return (
        f"V{shadow.version} agrees with V{control.version} on {_percent(agreement)} of "
        f"{agreement.n:,} answers (95% CI {agreement.low * 100:.1f}% to "
        f"{agreement.high * 100:.1f}%); {dropped:,} inputs dropped under load"
    )


def _regression_verdict(control: Variant, candidate: Variant, config: ExperimentConfig) -> Verdict:
    """A regressor's split: the mean absolute errors, Welch's z-test, lower is better."""
    a, b = control.mean_abs_error, candidate.mean_abs_error
    z, p = welch_z_test(b.value or 0.0, b.variance, b.n, a.value or 0.0, a.variance, a.n)
    significant = p < config.alpha and z != 0
    better = (control.version if z > 0 else candidate.version) if significant else None
    test = Test("mean absolute error", z, p, significant, better, "Welch z-test")
    errors = _test("server error rate", control, candidate, control.server_errors,
                   candidate.server_errors, config, lower_is_better=True)  # fmt: skip
    labelled = a.n + b.n
    if better is not None:
        best, other = (candidate, control) if better == candidate.version else (control, candidate)
        sentence = (
            f"V{best.version} is better on mean absolute error: {_mae(best)} vs {_mae(other)}, "
            f"{_p(p)}, {labelled:,} labelled values"
        )
    else:
        sentence = (
            f"No significant difference on mean absolute error yet: V{candidate.version} "
            f"{_mae(candidate)} vs V{control.version} {_mae(control)}, {_p(p)}, "
            f"{labelled:,} labelled values"
        )
    return Verdict((control, candidate), (test, errors), None, better, sentence)


def _mae(variant: Variant) -> str:
    mean, interval = variant.mean_abs_error.value, variant.mean_abs_error.interval()
    if mean is None or interval is None:
        return "n/a"
    return f"{mean:.4g} (95% CI {interval[0]:.4g} to {interval[1]:.4g})"


def _percent(rate: Rate) -> str:
    return "n/a" if rate.value is None else f"{rate.value * 100:.1f}%"


def _p(p_value: float) -> str:
    return "p < 0.001" if p_value < 0.001 else f"p = {p_value:.3f}"
