"""Quantization, its report and the accuracy gate, on real scikit-learn models."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.quantization import QuantType, quantize_dynamic
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from edge_protocol import canonical_bytes
from model_registry.build import (
    BuildResult,
    EvalSet,
    Evaluation,
    Metrics,
    build,
    check_gate,
    quantize_model,
)
from model_registry.errors import AccuracyGateError, InvalidInputError
from tests.registry.build.trained import (
    DECIMAL,
    SEED,
    Trained,
    classification,
    node_bytes,
    run_model,
    train,
)

# --- quantization and the report --------------------------------------------------------------


def test_mlp_int8_is_at_most_a_third_of_fp32_and_passes_the_gate(
    mlp: Trained, mlp_int8: BuildResult
) -> None:
    report = mlp_int8.report
    ops = {node.op_type for node in onnx.load_from_string(mlp_int8.artifact).graph.node}

    assert report["quantization"] == "dynamic"
    assert "MatMulInteger" in ops
    assert report["fp32_size"] == len(mlp.converted.model_bytes)
    assert report["artifact_size"] == len(mlp_int8.artifact)
    assert report["artifact_size"] * 3 <= report["fp32_size"]
    assert report["size_ratio"] == f"{len(mlp_int8.artifact) / len(mlp.converted.model_bytes):.4f}"
    assert DECIMAL.match(report["accuracy_fp32"])
    assert DECIMAL.match(report["accuracy_int8"])
    assert float(report["agreement"]) >= 0.95
    assert report["accuracy_gate"] == "passed"
    assert (report["task"], report["eval_rows"], report["precision"]) == (
        "classifier",
        200,
        "float32",
    )
    assert (report["source"], report["onnxruntime"]) == ("sklearn", ort.__version__)
    assert report["conversion"]["estimator"] == "MLPClassifier"


def test_report_is_signable_canonical_json_without_floats(mlp_int8: BuildResult) -> None:
    canonical_bytes(mlp_int8.report)  # raises on any float

    def numbers(value: Any) -> list[Any]:
        if isinstance(value, dict):
            return [n for v in value.values() for n in numbers(v)]
        return [value] if isinstance(value, int | float) and not isinstance(value, bool) else []

    assert all(isinstance(n, int) for n in numbers(mlp_int8.report))


def test_static_qdq_with_calibration_rows(mlp: Trained, mlp_static: BuildResult) -> None:
    ops = {node.op_type for node in onnx.load_from_string(mlp_static.artifact).graph.node}

    assert mlp_static.report["quantization"] == "static_qdq"
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert len(mlp_static.artifact) * 3 <= len(mlp.converted.model_bytes)
    assert mlp_static.report["accuracy_gate"] == "passed"
    assert float(mlp_static.report["agreement"]) >= 0.95


@pytest.mark.parametrize(
    ("estimator", "operator"),
    [
        (GradientBoostingClassifier(n_estimators=10, random_state=SEED), "TreeEnsembleClassifier"),
        (LogisticRegression(max_iter=500), "LinearClassifier"),
    ],
)
def test_ml_domain_models_pass_through_unchanged(estimator: Any, operator: str) -> None:
    trained = train(estimator, classification(n_features=8))
    model_bytes = trained.converted.model_bytes

    result = build(model_bytes, quantize="int8", eval_set=trained.eval_set)

    # Unchanged but for the name of dimension 0 (so devices may batch requests).
    assert node_bytes(result.artifact) == node_bytes(model_bytes)
    assert "shared" in result.report["batch_dimension"]
    assert result.report["quantization"] == "none"
    reason = result.report["quantization_reason"]
    assert "pass through unchanged" in reason
    assert f"ai.onnx.ml.{operator}" in reason
    assert "accuracy_fp32" in result.report
    assert "accuracy_int8" not in result.report
    assert "agreement" not in result.report
    assert result.report["artifact_size"] == len(result.artifact)
    assert result.report["fp32_size"] == len(model_bytes)
    assert result.report["accuracy_gate"].startswith("not applied")


def test_regressor_reports_r2_and_mae_before_and_after(regressor: Trained) -> None:
    result = build(regressor.converted.model_bytes, quantize="int8", eval_set=regressor.eval_set)

    report = result.report
    metrics = {key: report[key] for key in ("r2_fp32", "r2_int8", "mae_fp32", "mae_int8")}
    assert (report["task"], report["quantization"]) == ("regressor", "dynamic")
    assert float(metrics["r2_fp32"]) > 0.8
    assert float(metrics["r2_fp32"]) - float(metrics["r2_int8"]) <= 0.01
    assert all(isinstance(value, str) for value in metrics.values())
    assert "accuracy_fp32" not in report
    assert float(report["agreement"]) > 0.9
    tolerance = 0.05 * np.std(regressor.eval_set.y)
    assert float(report["agreement_tolerance"]) == pytest.approx(tolerance, rel=1e-4)
    assert float(report["max_abs_diff"]) > 0  # int8 really differs from fp32


def test_duplicate_default_domain_import_is_normalised_before_quantizing(
    mlp: Trained, tmp_path: Path
) -> None:
    # skl2onnx writes the default domain twice for graphs of ML-domain nodes only; here the
    # same defect is put into a quantizable graph to show what it does to onnxruntime.
    model = onnx.load_from_string(mlp.converted.model_bytes)
    model.opset_import.append(onnx.helper.make_opsetid("ai.onnx", 17))
    defective = model.SerializeToString()
    ort.InferenceSession(defective, providers=["CPUExecutionProvider"])  # loads fine

    with pytest.raises(ValueError, match=r"Failed to find proper ai\.onnx domain"):
        quantize_dynamic(model, tmp_path / "int8.onnx", weight_type=QuantType.QInt8)
    result = quantize_model(defective)

    assert result.method == "dynamic"
    domains = [entry.domain for entry in onnx.load_from_string(result.model_bytes).opset_import]
    assert sorted(domains) == sorted(set(domains))


def test_converted_models_list_each_operator_domain_once(forest: Trained) -> None:
    model = onnx.load_from_string(forest.converted.model_bytes)

    domains = [entry.domain for entry in model.opset_import]

    assert sorted(domains) == ["", "ai.onnx.ml"]


def test_gemm_weights_are_not_quantized_dynamically() -> None:
    weights = onnx.numpy_helper.from_array(np.ones((4, 2), dtype=np.float32), "W")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Gemm", ["input", "W"], ["output"])],
        "gemm",
        [onnx.helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [None, 4])],
        [onnx.helper.make_tensor_value_info("output", onnx.TensorProto.FLOAT, [None, 2])],
        [weights],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8

    result = quantize_model(model.SerializeToString())

    assert result.method == "none"
    assert "give calibration rows" in result.reason


# --- the accuracy gate ------------------------------------------------------------------------


def test_gate_refuses_a_real_int8_drop(mlp: Trained) -> None:
    # Rows where the int8 model's label differs from the fp32 model's, labelled with the fp32
    # answer: fp32 is right on all of them, int8 is not, so the drop is real.
    rng = np.random.default_rng(SEED)
    rows = rng.normal(scale=0.5, size=(4000, 32)).astype(np.float32)
    fp32_labels = run_model(mlp.converted.model_bytes, rows)["label"]
    int8 = quantize_model(mlp.converted.model_bytes)
    differ = np.flatnonzero(run_model(int8.model_bytes, rows)["label"] != fp32_labels)
    assert differ.size > 0, "no row where int8 changes a label: the test data needs changing"
    chosen = np.concatenate([differ[:20], np.arange(20)])
    eval_set = EvalSet.from_arrays(rows[chosen], fp32_labels[chosen])

    with pytest.raises(AccuracyGateError) as refused:
        build(mlp.converted.model_bytes, quantize="int8", eval_set=eval_set)

    message = str(refused.value)
    assert re.search(r"int8 accuracy \d+\.\d\d% is \d+\.\d\d points below", message)
    assert "fp32 accuracy 100.00% (limit 1.0)" in message


@pytest.mark.parametrize(
    ("task", "before", "after", "limit", "message"),
    [
        (
            "classifier",
            Metrics(accuracy=0.946),
            Metrics(accuracy=0.912),
            1.0,
            "int8 accuracy 91.20% is 3.40 points below fp32 accuracy 94.60% (limit 1.0)",
        ),
        ("classifier", Metrics(accuracy=0.95), Metrics(accuracy=0.95), 0.0, None),
        ("classifier", Metrics(accuracy=0.95), Metrics(accuracy=0.94), 1.0, None),
        ("classifier", Metrics(accuracy=0.95), Metrics(accuracy=0.96), 0.0, None),
        (
            "regressor",
            Metrics(r2=0.9725, mae=1.0),
            Metrics(r2=0.9512, mae=1.2),
            1.0,
            "int8 R^2 0.9512 is 0.0213 below fp32 R^2 0.9725 (limit 0.0100, i.e. 1.0 points)",
        ),
        ("regressor", Metrics(r2=0.97, mae=1.0), Metrics(r2=0.965, mae=1.1), 1.0, None),
        ("regressor", Metrics(r2=0.97, mae=1.0), Metrics(r2=float("nan"), mae=1.1), 1.0, "nan"),
    ],
)
def test_gate_decision_and_message(
    task: Any, before: Metrics, after: Metrics, limit: float, message: str | None
) -> None:
    evaluation = Evaluation(task, 100, before, after)

    if message is None:
        check_gate(evaluation, limit)
        return
    with pytest.raises(AccuracyGateError, match=re.escape(message)):
        check_gate(evaluation, limit)


@pytest.mark.parametrize("limit", [-1.0, float("nan"), float("inf")])
def test_accuracy_limit_must_be_a_finite_non_negative_number(mlp: Trained, limit: float) -> None:
    with pytest.raises(InvalidInputError, match="accuracy limit"):
        build(mlp.converted.model_bytes, accuracy_limit_points=limit)


def test_eval_set_must_fit_the_model(mlp: Trained) -> None:
    narrow = EvalSet.from_arrays(np.zeros((5, 8)), np.zeros(5, dtype=np.int64))
    strings = EvalSet.from_arrays(mlp.eval_set.X, mlp.eval_set.y.astype(str))

    with pytest.raises(InvalidInputError, match=r"8 features per row.*takes 32"):
        build(mlp.converted.model_bytes, eval_set=narrow)
    with pytest.raises(InvalidInputError, match=r"labels are numbers.*y holds strings"):
        build(mlp.converted.model_bytes, eval_set=strings)
