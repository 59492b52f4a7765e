"""The build-sklearn command's files, evaluation sets, and what devices get."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import onnx
import pytest
from sklearn.ensemble import RandomForestClassifier

from model_registry.build import (
    BuildResult,
    build_sklearn_file,
    inspect_model,
    load_eval_set,
    quantize_model,
)
from model_registry.errors import InvalidInputError
from tests.registry.build.trained import Trained
from tests.support.models import ModelSet

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
