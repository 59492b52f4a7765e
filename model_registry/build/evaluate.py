"""Quality on an evaluation set, before and after quantization, and the accuracy gate.

Classifiers are scored by accuracy of the label output; regressors by R^2 and mean absolute
error. The gate takes one limit in "points": for classifiers a point is one percentage point of
accuracy, for regressors one hundredth of R^2 (the default 1.0 allows an R^2 drop of 0.01), so
one setting reads the same for both kinds of model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from edge_protocol import ModelIO
from model_registry.build.datasets import EvalSet
from model_registry.build.runtime import (
    FLOAT_DATATYPES,
    LoadedModel,
    check_rows_fit,
    predict_rows,
)
from model_registry.errors import AccuracyGateError, InvalidInputError

Task = Literal["classifier", "regressor"]
TASKS: tuple[Task, ...] = ("classifier", "regressor")
LABEL_DATATYPES = frozenset(
    {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BYTES"}
)
# Two regression predictions "agree" when they differ by at most 5% of the targets' standard
# deviation: a disagreement that explains at most 0.25% of the targets' variance.
REGRESSION_AGREEMENT_FRACTION = 0.05
# Accuracies are ratios of counts; this absorbs float rounding of (a - b) * 100 at the limit.
_GATE_EPSILON_POINTS = 1e-9


@dataclass(frozen=True)
class Metrics:
    """Quality of one model: accuracy for classifiers, R^2 and MAE for regressors."""

    accuracy: float | None = None
    r2: float | None = None
    mae: float | None = None


@dataclass(frozen=True)
class Agreement:
    """How often the quantized model answers like the original one."""

    fraction: float  # identical labels, or regression outputs within `tolerance`
    max_abs_diff: float | None = None  # regressors only
    tolerance: float | None = None  # regressors only


@dataclass(frozen=True)
class Evaluation:
    """Metrics of the original model and, when there is one, of the quantized model."""

    task: Task
    rows: int
    reference: Metrics
    candidate: Metrics | None = None
    agreement: Agreement | None = None


def detect_task(io: ModelIO) -> Task | None:
    """Classifier if an output carries integer or string labels, regressor if all are floats."""
    if any(spec.datatype in LABEL_DATATYPES for spec in io.outputs):
        return "classifier"
    if io.outputs and all(spec.datatype in FLOAT_DATATYPES for spec in io.outputs):
        return "regressor"
    return None


def resolve_task(io: ModelIO, task: str | None) -> Task:
    """Return the given task if valid, else the one the model's outputs imply."""
    if task is not None:
        if task not in TASKS:
            raise InvalidInputError(f"task must be 'classifier' or 'regressor', not {task!r}")
        return "classifier" if task == "classifier" else "regressor"
    detected = detect_task(io)
    if detected is None:
        raise InvalidInputError(
            "cannot tell from the model's outputs whether it is a classifier or a regressor; "
            "say which with task='classifier' or task='regressor'"
        )
    return detected


def evaluate(
    reference: LoadedModel,
    candidate: LoadedModel | None,
    eval_set: EvalSet,
    task: Task,
) -> Evaluation:
    """Measure the reference model (and the candidate, with agreement) on the evaluation set."""
    check_rows_fit(reference.io, eval_set.X, "the evaluation set")
    ref_pred = predictions(reference, eval_set.X, task)
    _check_label_kinds(ref_pred, eval_set.y, task)
    ref_metrics = measure(ref_pred, eval_set.y, task)
    if candidate is None:
        return Evaluation(task, len(eval_set.y), ref_metrics)
    cand_pred = predictions(candidate, eval_set.X, task)
    cand_metrics = measure(cand_pred, eval_set.y, task)
    agreement = agree(ref_pred, cand_pred, eval_set.y, task)
    return Evaluation(task, len(eval_set.y), ref_metrics, cand_metrics, agreement)


def predictions(model: LoadedModel, rows: NDArray[Any], task: Task) -> NDArray[Any]:
    """Return one prediction per row: the label output, or the regression output flattened."""
    outputs = predict_rows(model, rows)
    specs = model.io.outputs
    if task == "classifier":
        labels = [s.name for s in specs if s.datatype in LABEL_DATATYPES]
        if labels:
            return _per_row(outputs[labels[0]], len(rows), labels[0])
        # A float-only classifier (logits or probabilities): its label is the best column.
        name = _first_float_output(model)
        return np.asarray(np.argmax(outputs[name].reshape(len(rows), -1), axis=1))
    name = _first_float_output(model)
    return _per_row(outputs[name], len(rows), name).astype(np.float64)


def measure(pred: NDArray[Any], y: NDArray[Any], task: Task) -> Metrics:
    """Score predictions against the truth."""
    if task == "classifier":
        return Metrics(accuracy=float(np.mean(_as_comparable(pred) == _as_comparable(y))))
    truth = y.astype(np.float64)
    residual = float(np.sum((truth - pred) ** 2))
    total = float(np.sum((truth - truth.mean()) ** 2))
    # Constant targets leave R^2 undefined; scikit-learn's convention gives 1 or 0.
    r2 = 1.0 - residual / total if total > 0 else (1.0 if residual == 0 else 0.0)
    return Metrics(r2=r2, mae=float(np.mean(np.abs(truth - pred))))


def agree(
    reference: NDArray[Any], candidate: NDArray[Any], y: NDArray[Any], task: Task
) -> Agreement:
    """Return how often the candidate's predictions match the reference's."""
    if task == "classifier":
        same = _as_comparable(reference) == _as_comparable(candidate)
        return Agreement(float(np.mean(same)))
    diff = np.abs(reference - candidate)
    tolerance = REGRESSION_AGREEMENT_FRACTION * (float(np.std(y.astype(np.float64))) or 1.0)
    return Agreement(float(np.mean(diff <= tolerance)), float(np.max(diff)), tolerance)


def check_gate(evaluation: Evaluation, limit_points: float) -> None:
    """Raise AccuracyGateError when the candidate lost more than `limit_points` of quality."""
    if not (math.isfinite(limit_points) and limit_points >= 0):
        raise InvalidInputError(f"the accuracy limit must be a number >= 0, not {limit_points}")
    after = evaluation.candidate
    if after is None:
        return
    before = evaluation.reference
    if evaluation.task == "classifier":
        _gate("accuracy", before.accuracy, after.accuracy, limit_points)
    else:
        _gate("R^2", before.r2, after.r2, limit_points)


def _gate(metric: str, before: float | None, after: float | None, limit_points: float) -> None:
    if before is None or after is None:
        raise InvalidInputError(f"no {metric} was measured to apply the gate to")
    drop = (before - after) * 100
    if math.isfinite(after) and drop <= limit_points + _GATE_EPSILON_POINTS:
        return
    if metric == "accuracy":
        raise AccuracyGateError(
            f"int8 accuracy {after * 100:.2f}% is {drop:.2f} points below fp32 accuracy "
            f"{before * 100:.2f}% (limit {limit_points})"
        )
    raise AccuracyGateError(
        f"int8 R^2 {after:.4f} is {drop / 100:.4f} below fp32 R^2 {before:.4f} "
        f"(limit {limit_points / 100:.4f}, i.e. {limit_points} points)"
    )


def _first_float_output(model: LoadedModel) -> str:
    for spec in model.io.outputs:
        if spec.datatype in FLOAT_DATATYPES:
            return spec.name
    raise InvalidInputError("the model has no floating-point output to read predictions from")


def _per_row(values: NDArray[Any], rows: int, name: str) -> NDArray[Any]:
    if values.size != rows:
        raise InvalidInputError(
            f"output {name!r} gives {values.size // max(rows, 1)} values per row; "
            "the evaluation compares one prediction per row with y"
        )
    return values.reshape(rows)


def _as_comparable(values: NDArray[Any]) -> NDArray[Any]:
    # onnxruntime returns string labels as an object array of str; compare them as str.
    return values.astype(str) if values.dtype.kind in "OU" else values


def _check_label_kinds(pred: NDArray[Any], y: NDArray[Any], task: Task) -> None:
    if task != "classifier":
        if y.dtype.kind == "U":
            raise InvalidInputError(
                "the evaluation set's y holds strings, but a regressor needs numbers"
            )
        return
    if (pred.dtype.kind in "OU") != (y.dtype.kind == "U"):
        model_kind = "strings" if pred.dtype.kind in "OU" else "numbers"
        y_kind = "strings" if y.dtype.kind == "U" else "numbers"
        raise InvalidInputError(
            f"the model's labels are {model_kind} but the evaluation set's y holds {y_kind}"
        )
