"""Inspecting built models, double precision for trees, and the self-test."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from skl2onnx import to_onnx
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from edge_protocol import SelfTest, TensorData, check_selftest_outputs
from edge_protocol.errors import SelfTestMismatchError
from model_registry.build import (
    BuildResult,
    EvalSet,
    build,
    convert_estimator,
    inspect_model,
)
from model_registry.errors import InvalidModelError
from tests.registry.build.trained import (
    DTYPES,
    SEED,
    Trained,
    classification,
    run_model,
)

# --- inspection -------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [0, 1, 100, -10])
def test_corrupt_onnx_bytes_are_an_invalid_model(mlp: Trained, cut: int) -> None:
    data = mlp.converted.model_bytes[:cut] if cut else b"this is not an onnx model"

    with pytest.raises(InvalidModelError):
        inspect_model(data)
    with pytest.raises(InvalidModelError):
        build(data, quantize="int8")


def test_zipmap_output_is_refused_with_a_hint() -> None:
    x_train, y_train, _, _ = classification(n_features=6)
    model = LogisticRegression(max_iter=200).fit(x_train, y_train)
    with_zipmap = to_onnx(model, x_train[:1], target_opset={"": 17, "ai.onnx.ml": 3})

    with pytest.raises(InvalidModelError, match=r"seq\(map.*zipmap'?: False"):
        inspect_model(with_zipmap.SerializeToString())


def test_inspect_maps_types_and_variable_dimensions() -> None:
    x_train, y_train, _, _ = classification(n_features=6)
    names = np.array(["ant", "bee", "cat"])[y_train]
    converted = convert_estimator(LogisticRegression(max_iter=200).fit(x_train, names), x_train)

    io = inspect_model(converted.model_bytes)

    assert [(s.name, s.datatype, s.shape) for s in io.inputs] == [("input", "FP32", (-1, 6))]
    assert [(s.name, s.datatype, s.shape) for s in io.outputs] == [
        ("label", "BYTES", (-1,)),
        ("probabilities", "FP32", (-1, 3)),
    ]


def test_string_labels_are_scored_and_left_out_of_the_selftest() -> None:
    x_train, y_train, x_eval, y_eval = classification(n_features=6)
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
    labels = run_model(converted.model_bytes, x)["label"]
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
