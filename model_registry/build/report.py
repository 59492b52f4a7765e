"""The build report stored in a release's signed `build` field: one flat object.

Signed content is canonical JSON, which has no floats: every number that is not an integer is
written as a decimal string ("0.9650"), integers stay integers.
"""

from __future__ import annotations

from typing import Any

import onnxruntime as ort

from edge_protocol import canonical_bytes
from edge_protocol.errors import CanonicalJSONError
from model_registry.build.convert import ConversionReport
from model_registry.build.evaluate import Evaluation, Metrics
from model_registry.build.opsets import opset_summary
from model_registry.build.quantize import QuantizationResult
from model_registry.errors import BuildError


def decimal(value: float, places: int = 4) -> str:
    """Format a fraction or score with a fixed number of decimals, as a string."""
    return f"{value:.{places}f}"


def significant(value: float) -> str:
    """Format a magnitude (an error, a difference) with six significant digits, as a string."""
    return format(value, ".6g")


def build_report(
    *,
    source: str,
    precision: str,
    quantization: QuantizationResult,
    task: str | None,
    evaluation: Evaluation | None,
    gate: str,
    accuracy_limit_points: float,
    selftest_rows: int,
    selftest_source: str,
    selftest_skipped: tuple[str, ...] = (),
    conversion: ConversionReport | None = None,
) -> dict[str, Any]:
    """Assemble the report; raises BuildError if it would not survive canonical JSON."""
    report: dict[str, Any] = {
        "source": source,
        "precision": precision,
        "quantization": quantization.method,
        "quantization_reason": quantization.reason,
        "fp32_size": quantization.size_before,
        "artifact_size": quantization.size_after,
        "size_ratio": decimal(quantization.size_after / quantization.size_before),
        "eval_rows": evaluation.rows if evaluation is not None else 0,
        "accuracy_limit_points": str(accuracy_limit_points),
        "accuracy_gate": gate,
        "selftest_rows": selftest_rows,
        "selftest_inputs": selftest_source,
        "onnxruntime": ort.__version__,
        "opsets": _opsets(quantization.model_bytes),
    }
    if selftest_skipped:
        report["selftest_skipped_outputs"] = list(selftest_skipped)
    if task is not None:
        report["task"] = task
    if evaluation is not None:
        report.update(metrics_dict(evaluation))
        report.update(agreement_dict(evaluation))
    if conversion is not None:
        report["conversion"] = conversion.to_dict()
    try:
        canonical_bytes(report)
    except CanonicalJSONError as e:
        raise BuildError(f"the build report cannot be signed: {e}") from e
    return report


def metrics_dict(evaluation: Evaluation) -> dict[str, str]:
    """Return the metrics before (`_fp32`) and after (`_int8`) quantization as strings."""
    result = _metrics(evaluation.reference, "fp32")
    if evaluation.candidate is not None:
        result.update(_metrics(evaluation.candidate, "int8"))
    return result


def agreement_dict(evaluation: Evaluation) -> dict[str, str]:
    """Return how closely the int8 model follows the original, as strings."""
    agreement = evaluation.agreement
    if agreement is None:
        return {}
    # Classifiers: the fraction of identical labels. Regressors: the fraction within
    # `agreement_tolerance`, with the largest difference seen.
    result = {"agreement": decimal(agreement.fraction)}
    if agreement.tolerance is not None:
        result["agreement_tolerance"] = significant(agreement.tolerance)
    if agreement.max_abs_diff is not None:
        result["max_abs_diff"] = significant(agreement.max_abs_diff)
    return result


def _metrics(metrics: Metrics, suffix: str) -> dict[str, str]:
    result: dict[str, str] = {}
    if metrics.accuracy is not None:
        result[f"accuracy_{suffix}"] = decimal(metrics.accuracy)
    if metrics.r2 is not None:
        result[f"r2_{suffix}"] = decimal(metrics.r2)
    if metrics.mae is not None:
        result[f"mae_{suffix}"] = significant(metrics.mae)
    return result


def _opsets(model_bytes: bytes) -> dict[str, int]:
    # The default domain's name is "" in the proto; spelled out it reads better in a report.
    return {domain or "ai.onnx": v for domain, v in opset_summary(model_bytes).items()}
