"""The build pipeline on real scikit-learn models, real skl2onnx output and real onnxruntime."""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.quantization import QuantType, quantize_dynamic
from skl2onnx import to_onnx
from sklearn.datasets import make_classification, make_regression
from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from edge_protocol import SelfTest, TensorData, canonical_bytes, check_selftest_outputs
from edge_protocol.errors import SelfTestMismatchError
from model_registry.build import (
    BuildResult,
    ConvertedModel,
    EvalSet,
    Evaluation,
    Metrics,
    build,
    build_sklearn_file,
    check_gate,
    convert_estimator,
    inspect_model,
    load_eval_set,
    quantize_model,
)
from model_registry.errors import AccuracyGateError, InvalidInputError, InvalidModelError
from tests.support.models import ModelSet

SEED = 7
DTYPES = {"FP32": "<f4", "FP64": "<f8", "INT64": "<i8", "INT32": "<i4", "BOOL": "|b1"}
DECIMAL = re.compile(r"^-?[0-9]+\.[0-9]{4}$")


@dataclass(frozen=True)
class Trained:
    """A fitted estimator, its ONNX conversion and train/eval data."""

    estimator: Any
    converted: ConvertedModel
    train_rows: np.ndarray
    eval_set: EvalSet


def _classification(n_features: int = 32, n_samples: int = 600) -> tuple[np.ndarray, ...]:
    x, y = make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=n_features // 2,
        n_classes=3,
        random_state=SEED,
    )
    x = x.astype(np.float32)
    return x[:400], y[:400], x[400:], y[400:]


def _train(estimator: Any, data: tuple[np.ndarray, ...]) -> Trained:
    x_train, y_train, x_eval, y_eval = data
    with warnings.catch_warnings():
        # A few epochs are enough here; "did not converge" is expected.
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(x_train, y_train)
    converted = convert_estimator(estimator, x_train)
    return Trained(estimator, converted, x_train, EvalSet.from_arrays(x_eval, y_eval))


@pytest.fixture(scope="module")
def mlp() -> Trained:
    """The issue's model: 32 features -> 256 -> 256 -> 3 classes."""
    model = MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=10, random_state=SEED)
    return _train(model, _classification())


@pytest.fixture(scope="module")
def mlp_int8(mlp: Trained) -> BuildResult:
    """The MLP quantized dynamically and gated on its evaluation set."""
    return build(
        mlp.converted.model_bytes,
        quantize="int8",
        eval_set=mlp.eval_set,
        source="sklearn",
        conversion=mlp.converted.report,
    )


@pytest.fixture(scope="module")
def mlp_static(mlp: Trained) -> BuildResult:
    """The MLP quantized statically (QDQ) with calibration rows from its training data."""
    return build(
        mlp.converted.model_bytes,
        quantize="int8",
        eval_set=mlp.eval_set,
        calibration=mlp.train_rows[:128],
    )


@pytest.fixture(scope="module")
def regressor() -> Trained:
    """A scaled MLP regressor: an ML-domain Scaler op followed by MatMul layers."""
    x, y = make_regression(n_samples=500, n_features=8, noise=5.0, random_state=SEED)
    model = make_pipeline(
        StandardScaler(), MLPRegressor(hidden_layer_sizes=(64, 64), max_iter=300, random_state=SEED)
    )
    x = x.astype(np.float32)
    return _train(model, (x[:400], y[:400], x[400:], y[400:]))


@pytest.fixture(scope="module")
def forest() -> Trained:
    """A random forest: TreeEnsembleClassifier, nothing to quantize."""
    return _train(RandomForestClassifier(n_estimators=20, random_state=SEED), _classification())


@pytest.fixture(scope="module")
def forest_build(forest: Trained) -> BuildResult:
    """The forest built without an evaluation set: synthetic self-test rows."""
    return build(forest.converted.model_bytes, quantize="int8")


@pytest.fixture(scope="module")
def regressor_build(regressor: Trained) -> BuildResult:
    """The regressor quantized without an evaluation set."""
    return build(regressor.converted.model_bytes, quantize="int8")


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
    trained = _train(estimator, _classification(n_features=8))
    model_bytes = trained.converted.model_bytes

    result = build(model_bytes, quantize="int8", eval_set=trained.eval_set)

    # Unchanged but for the name of dimension 0 (so devices may batch requests).
    assert _nodes(result.artifact) == _nodes(model_bytes)
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
    fp32_labels = _run(mlp.converted.model_bytes, rows)["label"]
    int8 = quantize_model(mlp.converted.model_bytes)
    differ = np.flatnonzero(_run(int8.model_bytes, rows)["label"] != fp32_labels)
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


# --- inspection -------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [0, 1, 100, -10])
def test_corrupt_onnx_bytes_are_an_invalid_model(mlp: Trained, cut: int) -> None:
    data = mlp.converted.model_bytes[:cut] if cut else b"this is not an onnx model"

    with pytest.raises(InvalidModelError):
        inspect_model(data)
    with pytest.raises(InvalidModelError):
        build(data, quantize="int8")


def test_zipmap_output_is_refused_with_a_hint() -> None:
    x_train, y_train, _, _ = _classification(n_features=6)
    model = LogisticRegression(max_iter=200).fit(x_train, y_train)
    with_zipmap = to_onnx(model, x_train[:1], target_opset={"": 17, "ai.onnx.ml": 3})

    with pytest.raises(InvalidModelError, match=r"seq\(map.*zipmap'?: False"):
        inspect_model(with_zipmap.SerializeToString())


def test_inspect_maps_types_and_variable_dimensions() -> None:
    x_train, y_train, _, _ = _classification(n_features=6)
    names = np.array(["ant", "bee", "cat"])[y_train]
    converted = convert_estimator(LogisticRegression(max_iter=200).fit(x_train, names), x_train)

    io = inspect_model(converted.model_bytes)

    assert [(s.name, s.datatype, s.shape) for s in io.inputs] == [("input", "FP32", (-1, 6))]
    assert [(s.name, s.datatype, s.shape) for s in io.outputs] == [
        ("label", "BYTES", (-1,)),
        ("probabilities", "FP32", (-1, 3)),
    ]


def test_string_labels_are_scored_and_left_out_of_the_selftest() -> None:
    x_train, y_train, x_eval, y_eval = _classification(n_features=6)
    names = np.array(["ant", "bee", "cat"])
    model = LogisticRegression(max_iter=200).fit(x_train, names[y_train])
    converted = convert_estimator(model, x_train)

    result = build(converted.model_bytes, eval_set=EvalSet.from_arrays(x_eval, names[y_eval]))

    expected = model.score(x_eval, names[y_eval])
    assert float(result.report["accuracy_fp32"]) == pytest.approx(expected, abs=1e-4)
    assert [t.name for t in result.selftest.outputs] == ["probabilities"]
    assert result.report["selftest_skipped_outputs"] == ["label"]


# --- double precision for trees ---------------------------------------------------------------


def _fine_offsets() -> tuple[np.ndarray, np.ndarray]:
    # Features around 1e6 whose labels depend on offsets below float32's resolution there
    # (0.0625): scikit-learn scales them in float64, a float32 graph cannot.
    rng = np.random.default_rng(SEED)
    offsets = rng.uniform(0, 1, 400)
    x = np.stack([1e6 + offsets, rng.normal(size=400)], axis=1)
    return x, (np.sin(offsets * 40) > 0).astype(np.int64)


def test_tree_predictions_flipped_by_float32_select_double_precision() -> None:
    x, y = _fine_offsets()
    pipeline = make_pipeline(StandardScaler(), DecisionTreeClassifier(max_depth=6, random_state=0))
    pipeline.fit(x, y)

    converted = convert_estimator(pipeline, x)

    report = converted.report
    assert report.precision == "float64"
    assert report.mismatches_float32 is not None
    assert report.mismatches_float32 > 0
    assert report.mismatches_float64 == 0
    assert inspect_model(converted.model_bytes).inputs[0].datatype == "FP64"
    labels = _run(converted.model_bytes, x)["label"]
    np.testing.assert_array_equal(labels, pipeline.predict(x))
    result = build(converted.model_bytes, quantize="int8", conversion=report)
    assert result.report["precision"] == "float64"
    assert result.report["conversion"]["mismatches_float32"] == report.mismatches_float32
    assert result.selftest.inputs[0].datatype == "FP64"
    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    check_selftest_outputs(result.selftest, _fresh_outputs(result.artifact, result.selftest, level))


def test_trees_that_float32_reproduces_stay_float32(forest: Trained) -> None:
    report = forest.converted.report

    assert (report.precision, report.tree_ensemble, report.mismatches_float32) == (
        "float32",
        True,
        0,
    )
    assert report.mismatches_float64 is None


# --- self-test --------------------------------------------------------------------------------


def _array(tensor: TensorData) -> np.ndarray:
    return np.frombuffer(tensor.data, dtype=DTYPES[tensor.datatype]).reshape(tensor.shape)


def _tensor(name: str, value: np.ndarray) -> TensorData:
    datatype = {v: k for k, v in DTYPES.items()}[np.asarray(value).dtype.newbyteorder("<").str]
    return TensorData(name, datatype, value.shape, np.asarray(value).tobytes())


def _fresh_outputs(artifact: bytes, selftest: SelfTest, level: Any) -> dict[str, TensorData]:
    options = ort.SessionOptions()
    options.graph_optimization_level = level
    session = ort.InferenceSession(artifact, options, providers=["CPUExecutionProvider"])
    feeds = {tensor.name: _array(tensor) for tensor in selftest.inputs}
    names = [output.name for output in session.get_outputs()]
    return {
        name: _tensor(name, value)
        for name, value in zip(names, session.run(names, feeds), strict=True)
        if not isinstance(value.flat[0], str)
    }


@pytest.mark.parametrize("built", ["mlp_int8", "mlp_static", "forest_build", "regressor_build"])
@pytest.mark.parametrize(
    "level", [ort.GraphOptimizationLevel.ORT_ENABLE_ALL, ort.GraphOptimizationLevel.ORT_DISABLE_ALL]
)
def test_selftest_reproduces_in_a_fresh_session(
    request: pytest.FixtureRequest, built: str, level: Any
) -> None:
    result: BuildResult = request.getfixturevalue(built)

    check_selftest_outputs(result.selftest, _fresh_outputs(result.artifact, result.selftest, level))

    assert result.selftest.inputs[0].shape[0] == 4
    assert {t.name for t in result.selftest.outputs} == {s.name for s in result.io.outputs}


def test_selftest_detects_a_different_model(mlp_int8: BuildResult, forest: Trained) -> None:
    level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    other = _fresh_outputs(forest.converted.model_bytes, mlp_int8.selftest, level)

    with pytest.raises(SelfTestMismatchError):
        check_selftest_outputs(mlp_int8.selftest, other)


def test_selftest_tolerances_are_decimal_strings_by_precision(
    mlp: Trained, mlp_int8: BuildResult
) -> None:
    fp32 = build(mlp.converted.model_bytes, eval_set=mlp.eval_set)

    assert (fp32.selftest.atol, fp32.selftest.rtol) == ("0.0001", "1e-3")
    assert (mlp_int8.selftest.atol, mlp_int8.selftest.rtol) == ("0.02", "1e-2")


def test_selftest_labels_come_from_clear_decisions(mlp_int8: BuildResult) -> None:
    probabilities = _array(next(t for t in mlp_int8.selftest.outputs if t.name == "probabilities"))

    top2 = np.sort(probabilities, axis=1)[:, -2:]

    assert np.all(top2[:, 1] - top2[:, 0] >= 0.1)


def test_synthetic_selftest_rows_are_deterministic(forest: Trained) -> None:
    first = build(forest.converted.model_bytes)
    second = build(forest.converted.model_bytes)

    assert first.selftest == second.selftest
    assert first.report["selftest_inputs"] == "synthetic (seeded)"


# --- files: the build-sklearn command and evaluation sets --------------------------------------


def test_build_sklearn_file_writes_a_loadable_model(forest: Trained, tmp_path: Path) -> None:
    joblib.dump(forest.estimator, tmp_path / "model.joblib")
    np.savez(tmp_path / "data.npz", X=forest.train_rows, y=np.zeros(len(forest.train_rows)))

    report = build_sklearn_file(
        tmp_path / "model.joblib", tmp_path / "data.npz", tmp_path / "m.onnx"
    )

    assert report.estimator == "RandomForestClassifier"
    assert inspect_model((tmp_path / "m.onnx").read_bytes()).inputs[0].shape == (-1, 32)
    assert "32 features" in report.summary()


@pytest.mark.parametrize(
    ("case", "bad_file", "complaint"),
    [
        ("not-joblib", "model.joblib", "not a joblib file"),
        ("unfitted", "model.joblib", "not fitted"),
        ("not-an-estimator", "model.joblib", "not a scikit-learn estimator"),
        ("npz-without-X", "data.npz", "no array named 'X'"),
        ("wrong-feature-count", "data.npz", "5 features per row.*fitted on 32"),
        ("not-npz", "data.npz", "not a readable .npz"),
        ("y-length", "data.npz", "y has 3 entries but X has 10 rows"),
    ],
)
def test_build_sklearn_file_names_the_bad_file(
    forest: Trained, tmp_path: Path, case: str, bad_file: str, complaint: str
) -> None:
    estimator: Any = {"unfitted": RandomForestClassifier(), "not-an-estimator": {"a": 1}}.get(
        case, forest.estimator
    )
    joblib.dump(estimator, tmp_path / "model.joblib")
    arrays = {
        "npz-without-X": {"features": forest.train_rows},
        "wrong-feature-count": {"X": forest.train_rows[:, :5]},
        "y-length": {"X": forest.train_rows[:10], "y": np.zeros(3)},
    }.get(case, {"X": forest.train_rows})
    np.savez(tmp_path / "data.npz", **arrays)
    if case == "not-joblib":
        (tmp_path / "model.joblib").write_bytes(b"\x00garbage, not a pickle")
    if case == "not-npz":
        (tmp_path / "data.npz").write_text("X = 1, 2, 3")
    out = tmp_path / "out.onnx"

    with pytest.raises(
        InvalidInputError, match=re.escape(str(tmp_path / bad_file)) + ".*" + complaint
    ):
        build_sklearn_file(tmp_path / "model.joblib", tmp_path / "data.npz", out)
    assert not out.exists()


def test_build_sklearn_file_says_what_the_wrong_file_is_and_checks_the_output_first(
    forest: Trained, tmp_path: Path
) -> None:
    joblib.dump(forest.estimator, tmp_path / "model.joblib")
    np.savez(tmp_path / "data.npz", X=forest.train_rows)
    build_sklearn_file(tmp_path / "model.joblib", tmp_path / "data.npz", tmp_path / "m.onnx")
    for given, complaint in [
        ("m.onnx", "it is an ONNX model already: push it with model-registry push"),
        ("data.npz", "it looks like a NumPy .npz archive)"),
    ]:
        with pytest.raises(InvalidInputError, match=re.escape(complaint)):
            build_sklearn_file(tmp_path / given, tmp_path / "data.npz", tmp_path / "o.onnx")
    for out, complaint in [
        (tmp_path / "missing" / "o.onnx", f"the directory {tmp_path / 'missing'} does not exist"),
        (tmp_path, "is a directory; name the .onnx file to write"),
    ]:
        with pytest.raises(InvalidInputError, match=f"^-o {re.escape(str(out))}: .*{complaint}"):
            build_sklearn_file(tmp_path / "model.joblib", tmp_path / "data.npz", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz", "m.onnx", "model.joblib"]


@pytest.mark.parametrize(
    ("arrays", "complaint"),
    [
        ({"X": np.zeros((4, 2))}, "no array named 'y'"),
        ({"X": np.zeros(4), "y": np.zeros(4)}, "X must be a 2-D matrix"),
        ({"X": np.zeros((4, 2)), "y": np.zeros(3)}, "y has 3 entries but X has 4 rows"),
        ({"X": np.zeros((4, 2)), "y": np.zeros((4, 1))}, "y must be 1-D"),
        ({"X": np.array([["a", "b"]] * 4), "y": np.zeros(4)}, "X must hold numbers"),
        ({"X": np.full((4, 2), np.nan), "y": np.zeros(4)}, "NaN or infinite"),
        ({"X": np.zeros((0, 2)), "y": np.zeros(0)}, "empty"),
    ],
)
def test_load_eval_set_validates(tmp_path: Path, arrays: dict[str, Any], complaint: str) -> None:
    path = tmp_path / "eval.npz"
    np.savez(path, **arrays)

    with pytest.raises(InvalidInputError, match=re.escape(str(path)) + ".*" + complaint):
        load_eval_set(path)


def test_load_eval_set_reads_x_and_y(tmp_path: Path) -> None:
    path = tmp_path / "eval.npz"
    np.savez(path, X=np.ones((3, 2), dtype=np.float32), y=np.array([0, 1, 0]))

    eval_set = load_eval_set(path)

    assert eval_set.X.shape == (3, 2)
    assert eval_set.y.tolist() == [0, 1, 0]


def _run(model_bytes: bytes, rows: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    dtype = np.float64 if session.get_inputs()[0].type == "tensor(double)" else np.float32
    names = [output.name for output in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": rows.astype(dtype)}), strict=True))


def _nodes(model_bytes: bytes) -> list[bytes]:
    """The graph's operators, serialized: what a model computes, without its tensor names."""
    return [node.SerializeToString() for node in onnx.load_from_string(model_bytes).graph.node]


def test_registry_models_are_batchable_on_devices(mlp_int8: BuildResult) -> None:
    """Dimension 0 is named alike everywhere, so an agent may merge concurrent requests."""
    from edge_agent.runtime import load_model as load_on_device

    proto = onnx.load_from_string(mlp_int8.artifact)
    dims = {
        v.type.tensor_type.shape.dim[0].dim_param for v in (*proto.graph.input, *proto.graph.output)
    }
    assert dims == {"batch"}
    assert load_on_device(mlp_int8.artifact, name="mlp", version=1).batchable


def test_the_quantizer_logs_nothing_the_operator_cannot_act_on(
    onnx_models: ModelSet, caplog: pytest.LogCaptureFixture
) -> None:
    model = onnx_models.classifier.onnx_path.read_bytes()
    with caplog.at_level(logging.DEBUG):
        result = quantize_model(model, calibration=np.zeros((8, 32), dtype=np.float32))
        quantize_model(model)
    assert result.method != "none"
    chatter = [r.getMessage() for r in caplog.records if "onnxruntime" in r.pathname]
    assert chatter == []  # "Please consider to run pre-processing...", a line per tensor
