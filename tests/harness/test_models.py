"""The ONNX model fixtures load in onnxruntime and predict what scikit-learn predicts."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from sklearn.metrics import accuracy_score, r2_score

from tests.support.models import BuiltModel, ModelSet


def _session(model: BuiltModel) -> ort.InferenceSession:
    """An onnxruntime CPU session for the model's file."""
    return ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])


def _run(model: BuiltModel) -> list[Any]:
    """Run the ONNX model on its evaluation features and return every output."""
    outputs: list[Any] = _session(model).run(None, {model.input_name: model.X_eval})
    return outputs


@pytest.mark.parametrize("kind", ["classifier", "regressor"])
def test_onnx_models_take_float32_feature_batches(onnx_models: ModelSet, kind: str) -> None:
    model: BuiltModel = getattr(onnx_models, kind)

    (model_input,) = _session(model).get_inputs()

    assert model.kind == kind
    assert model_input.name == model.input_name
    assert model_input.type == "tensor(float)"
    assert model_input.shape[1:] == [model.n_features]
    assert model.X_eval.dtype == np.float32
    assert model.X_eval.shape[1] == model.n_features


def test_classifier_onnx_matches_sklearn(onnx_models: ModelSet) -> None:
    model = onnx_models.classifier

    labels, probabilities = _run(model)

    # No ZipMap: probabilities are a plain (n_samples, n_classes) float tensor.
    assert model.output_names == ("label", "probabilities")
    assert probabilities.shape == (len(model.X_eval), 3)
    np.testing.assert_array_equal(labels, model.estimator.predict(model.X_eval))
    np.testing.assert_allclose(
        probabilities, model.estimator.predict_proba(model.X_eval), rtol=1e-4, atol=1e-5
    )
    # Well above the 1/3 of guessing, so tests can tell a real model from a broken one.
    assert accuracy_score(model.y_eval, labels) > 0.6


def test_regressor_onnx_matches_sklearn(onnx_models: ModelSet) -> None:
    model = onnx_models.regressor

    (predictions,) = _run(model)

    expected = model.estimator.predict(model.X_eval)
    assert predictions.shape == (len(model.X_eval), 1)
    # ONNX sums the trees in float32 and sklearn in float64: agree to ~1e-7 relative.
    np.testing.assert_allclose(predictions.ravel(), expected, rtol=1e-4, atol=1e-3)
    assert r2_score(model.y_eval, predictions.ravel()) > 0.6
