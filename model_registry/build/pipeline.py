"""The build pipeline: ONNX in; quantized where it pays, gated, self-tested, reported.

`build` is blocking (onnxruntime sessions, quantization); the service runs it in a thread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from numpy.typing import NDArray

from edge_protocol import ModelIO, Profile, SelfTest
from model_registry.build.batching import share_batch_dimension
from model_registry.build.convert import ConversionReport
from model_registry.build.datasets import EvalSet, check_features, load_eval_set, parse_eval_set
from model_registry.build.evaluate import (
    Evaluation,
    Task,
    check_gate,
    detect_task,
    evaluate,
    resolve_task,
)
from model_registry.build.profile import make_profile
from model_registry.build.quantize import QuantizationResult, quantize_model
from model_registry.build.report import build_report
from model_registry.build.runtime import LoadedModel, check_rows_fit, load_model
from model_registry.build.selftest import DEFAULT_ROWS, make_selftest
from model_registry.errors import BuildError, InvalidInputError, InvalidModelError

__all__ = ["BuildResult", "EvalSet", "build", "load_eval_set", "parse_eval_set"]
QUANTIZE_OPTIONS = (None, "int8")
SOURCES = ("onnx", "sklearn")


@dataclass(frozen=True)
class BuildResult:
    """What a release is made of: the artifact devices run, its io, self-test and report."""

    artifact: bytes
    io: ModelIO
    selftest: SelfTest
    report: dict[str, Any]
    evaluation: Evaluation | None = None  # what the champion gate compares (services)
    profile: Profile | None = None  # the reference profile drift is measured against


def build(
    model_bytes: bytes,
    *,
    quantize: str | None = None,
    eval_set: EvalSet | None = None,
    calibration: NDArray[Any] | None = None,
    accuracy_limit_points: float = 1.0,
    source: str = "onnx",
    task: str | None = None,
    conversion: ConversionReport | None = None,
    selftest_rows: int = DEFAULT_ROWS,
    reference_rows: NDArray[Any] | None = None,
) -> BuildResult:
    """Quantize (if asked), evaluate and gate, self-test and report an ONNX model."""
    _check_options(quantize, calibration, accuracy_limit_points, source)
    reference = load_model(model_bytes)
    calibration = _check_data(reference, eval_set, calibration)
    if reference_rows is not None:  # checked before the long steps, for a quick answer
        reference_rows = check_features(reference_rows, "the reference rows")
        check_rows_fit(reference.io, reference_rows, "the reference rows")
    quantization = _quantize(model_bytes, quantize, calibration)
    quantized = quantization.method != "none"
    artifact = _load_artifact(quantization, reference) if quantized else reference
    artifact, batch_dimension = share_batch_dimension(artifact)
    quantization = replace(quantization, size_after=len(artifact.model_bytes))
    resolved = _task(reference, eval_set, task)
    evaluation = _evaluate(reference, artifact if quantized else None, eval_set, resolved)
    if evaluation is not None:
        check_gate(evaluation, accuracy_limit_points)
    rows = eval_set.X if eval_set is not None else None
    selftest = make_selftest(artifact, quantized=quantized, rows=rows, count=selftest_rows)
    report = build_report(
        source=source,
        precision=_precision(reference),
        quantization=quantization,
        task=resolved,
        evaluation=evaluation,
        gate=_gate_result(quantized, evaluation),
        accuracy_limit_points=accuracy_limit_points,
        selftest_rows=_rows(selftest),
        selftest_source="evaluation set" if eval_set is not None else "synthetic (seeded)",
        selftest_skipped=tuple(s.name for s in artifact.io.outputs if s.datatype == "BYTES"),
        conversion=conversion,
    )
    report["batch_dimension"] = batch_dimension
    profile, report["profile_source"] = _profile(artifact, eval_set, reference_rows)
    return BuildResult(artifact.model_bytes, artifact.io, selftest, report, evaluation, profile)


def _profile(
    artifact: LoadedModel, eval_set: EvalSet | None, reference: NDArray[Any] | None
) -> tuple[Profile | None, str]:
    """The drift profile, from the reference rows or else the evaluation set, and its source."""
    if reference is not None:
        return make_profile(artifact, reference), "reference set"
    if eval_set is not None:
        return make_profile(artifact, eval_set.X), "evaluation set"
    return None, "none"


def _check_options(
    quantize: str | None,
    calibration: NDArray[Any] | None,
    accuracy_limit_points: float,
    source: str,
) -> None:
    if quantize not in QUANTIZE_OPTIONS:
        raise InvalidInputError(f"quantize must be 'int8' or None, not {quantize!r}")
    if calibration is not None and quantize is None:
        raise InvalidInputError("calibration rows were given, but no quantization was asked for")
    if not (math.isfinite(accuracy_limit_points) and accuracy_limit_points >= 0):
        raise InvalidInputError(
            f"the accuracy limit must be a number of points >= 0, not {accuracy_limit_points}"
        )
    if source not in SOURCES:
        raise InvalidInputError(f"source must be 'onnx' or 'sklearn', not {source!r}")


def _check_data(
    reference: LoadedModel, eval_set: EvalSet | None, calibration: NDArray[Any] | None
) -> NDArray[Any] | None:
    if eval_set is not None:
        check_rows_fit(reference.io, eval_set.X, "the evaluation set")
    if calibration is None:
        return None
    rows = check_features(calibration, "the calibration rows")
    check_rows_fit(reference.io, rows, "the calibration rows")
    return rows


def _quantize(
    model_bytes: bytes, quantize: str | None, calibration: NDArray[Any] | None
) -> QuantizationResult:
    if quantize == "int8":
        return quantize_model(model_bytes, calibration=calibration)
    size = len(model_bytes)
    return QuantizationResult(model_bytes, "none", "quantization was not requested", size, size)


def _precision(model: LoadedModel) -> str:
    # A float64 input means the double-precision conversion (or a double model uploaded as is).
    return "float64" if any(spec.datatype == "FP64" for spec in model.io.inputs) else "float32"


def _load_artifact(quantization: QuantizationResult, reference: LoadedModel) -> LoadedModel:
    try:
        artifact = load_model(quantization.model_bytes)
    except InvalidModelError as e:
        raise BuildError(f"the int8 model does not load: {e}") from e
    if _signature(artifact.io) != _signature(reference.io):
        raise BuildError("quantization changed the model's input or output names or datatypes")
    return artifact


def _signature(io: ModelIO) -> list[tuple[str, str]]:
    return [(spec.name, spec.datatype) for spec in (*io.inputs, *io.outputs)]


def _task(reference: LoadedModel, eval_set: EvalSet | None, task: str | None) -> Task | None:
    # Without an evaluation set the task is only informative, so an unknown one is no error.
    if eval_set is None and task is None:
        return detect_task(reference.io)
    return resolve_task(reference.io, task)


def _evaluate(
    reference: LoadedModel,
    candidate: LoadedModel | None,
    eval_set: EvalSet | None,
    task: Task | None,
) -> Evaluation | None:
    if eval_set is None or task is None:
        return None
    return evaluate(reference, candidate, eval_set, task)


def _gate_result(quantized: bool, evaluation: Evaluation | None) -> str:
    if not quantized:
        return "not applied: the artifact is the original model"
    if evaluation is None:
        return "not applied: no evaluation set was given"
    return "passed"


def _rows(selftest: SelfTest) -> int:
    shape = selftest.inputs[0].shape
    return shape[0] if shape else 1
