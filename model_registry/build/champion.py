"""The champion gate: a new version must score about as well as the version it replaces.

Both models run the same evaluation code (`build.evaluate`) on the same evaluation set; what
is compared is the artifact each release ships (int8 when quantized). Scores are in points:
accuracy x 100 for classifiers, R^2 x 100 for regressors (an R^2 of 0.95 is 95 points).
The push is refused when the new version scores more than `max_regression` points below the
champion, or below `min_accuracy` points; `force` pushes it anyway and records who did.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edge_protocol import ModelIO
from model_registry.build.datasets import EvalSet
from model_registry.build.evaluate import Evaluation, Metrics, Task, measure, predictions
from model_registry.build.report import decimal
from model_registry.build.runtime import check_rows_fit, load_model
from model_registry.errors import ChampionGateError, InvalidInputError, InvalidModelError

DEFAULT_MAX_REGRESSION = 1.0
# Scores are ratios of counts: this absorbs float rounding of (a - b) * 100 at the limit.
_EPSILON_POINTS = 1e-9


@dataclass(frozen=True)
class GatePolicy:
    """How much worse than the champion a new version may be, and who overrides it."""

    max_regression: float = DEFAULT_MAX_REGRESSION  # points below the champion
    min_accuracy: float | None = None  # points; None: no floor
    baseline: int | None = None  # the champion's version; None: the latest
    force: bool = False
    forced_by: str = ""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.max_regression) and 0 <= self.max_regression <= 100):
            raise InvalidInputError(
                f"max_regression must be from 0 to 100 points, not {self.max_regression}"
            )
        floor = self.min_accuracy
        if floor is not None and not (math.isfinite(floor) and -100 <= floor <= 100):
            raise InvalidInputError(f"min_accuracy must be from -100 to 100 points, not {floor}")
        if self.baseline is not None and self.baseline < 1:
            raise InvalidInputError(f"baseline must be a version >= 1, not {self.baseline}")


@dataclass(frozen=True)
class Champion:
    """The release the new version is compared with: its version, io and artifact bytes."""

    version: int
    io: ModelIO
    artifact: bytes


def metric_name(task: Task) -> str:
    """What a score of this task measures: `accuracy` or `R^2`."""
    return "accuracy" if task == "classifier" else "R^2"


def points(metrics: Metrics, task: Task) -> float:
    """A score in points: accuracy x 100, or R^2 x 100."""
    value = metrics.accuracy if task == "classifier" else metrics.r2
    if value is None:
        raise InvalidInputError(f"no {metric_name(task)} was measured to compare")
    return value * 100


def shipped_points(evaluation: Evaluation) -> float:
    """The score of the artifact a release ships: the int8 model when there is one."""
    return points(evaluation.candidate or evaluation.reference, evaluation.task)


def io_difference(new: ModelIO, champion: ModelIO) -> str | None:
    """Why two io schemas cannot be compared on one evaluation set, or None if they match."""
    for kind, ours, theirs in (("inputs", new.inputs, champion.inputs),
                               ("outputs", new.outputs, champion.outputs)):  # fmt: skip
        mine = [(s.name, s.datatype, _width(s.shape)) for s in ours]
        other = [(s.name, s.datatype, _width(s.shape)) for s in theirs]
        if mine != other:
            return f"its {kind} are {_describe(other)}, this model's are {_describe(mine)}"
    return None


def score_champion(champion: Champion, eval_set: EvalSet, task: Task) -> float:
    """Run the champion's artifact on the evaluation set with the same code; its points."""
    try:
        model = load_model(champion.artifact)
    except InvalidModelError as e:
        raise InvalidInputError(
            f"the champion version {champion.version} does not load any more: {e}"
        ) from e
    check_rows_fit(model.io, eval_set.X, "the evaluation set")
    return points(measure(predictions(model, eval_set.X, task), eval_set.y, task), task)


def judge(
    policy: GatePolicy, task: Task, version: int, score: float, champion: tuple[int, float] | None
) -> dict[str, Any]:
    """The gate's verdict as report fields; ChampionGateError when the push is refused."""
    fields: dict[str, Any] = {
        "champion_gate_max_regression": str(policy.max_regression),
        "champion_gate_score": decimal(score / 100),
    }
    if policy.min_accuracy is not None:
        fields["champion_gate_min_accuracy"] = str(policy.min_accuracy)
    reasons = _reasons(policy, task, version, score, champion)
    if champion is not None:
        fields["champion_version"] = champion[0]
        fields["champion_score"] = decimal(champion[1] / 100)
    if not reasons:
        fields["champion_gate"] = "passed" if champion is not None else "passed: no champion yet"
        return fields
    message = "; ".join(reasons)
    if not policy.force:
        raise ChampionGateError(f"{message}; pass --force to push it anyway")
    fields["champion_gate"] = f"forced: {message}"
    fields["champion_gate_forced_by"] = policy.forced_by
    return fields


def skipped(policy: GatePolicy, why: str, champion_version: int | None = None) -> dict[str, Any]:
    """Report fields of a gate that could not compare the two versions."""
    fields: dict[str, Any] = {
        "champion_gate": f"skipped: {why}",
        "champion_gate_max_regression": str(policy.max_regression),
    }
    if champion_version is not None:
        fields["champion_version"] = champion_version
    return fields


def _reasons(
    policy: GatePolicy, task: Task, version: int, score: float, champion: tuple[int, float] | None
) -> list[str]:
    metric, reasons = metric_name(task), []
    ours = _show(score, task)
    if champion is not None:
        champion_version, theirs = champion
        drop = theirs - score
        if not math.isfinite(score) or drop > policy.max_regression + _EPSILON_POINTS:
            reasons.append(
                f"version {version} scores {ours} on this evaluation set, the champion "
                f"version {champion_version} scores {_show(theirs, task)}: more than "
                f"{policy.max_regression} points worse"
            )
    floor = policy.min_accuracy
    if floor is not None and not (math.isfinite(score) and score >= floor - _EPSILON_POINTS):
        reasons.append(
            f"version {version} scores {ours} ({metric}) on this evaluation set, below the "
            f"minimum of {_show(floor, task)}"
        )
    return reasons


def _show(score: float, task: Task) -> str:
    if task == "classifier":
        return f"{score:.1f}%"
    return f"R^2 {score / 100:.4f} ({score:.1f} points)"


def _width(shape: tuple[int, ...]) -> tuple[int, ...]:
    # The batch dimension may be fixed in one build and dynamic in another: compare the rest.
    return tuple(shape[1:])


def _describe(specs: list[tuple[str, str, tuple[int, ...]]]) -> str:
    return ", ".join(f"{name} {datatype} {list(rest)}" for name, datatype, rest in specs) or "none"
