"""The drift profile a push puts in the release, on real models and real onnxruntime."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edge_protocol import Bins, Envelope, Release
from edge_protocol.profile import MAX_PROFILE_COLUMNS
from model_registry.build import EvalSet, build
from model_registry.errors import InvalidInputError
from tests.registry.conftest import Api
from tests.registry.hostile_input import END, MULTIPART, part
from tests.support.models import ModelSet


def _check_columns(profile_columns: tuple[Bins, ...], rows: np.ndarray[Any, Any]) -> None:
    """Each column's counts are what numpy puts between the column's own quantile edges."""
    for i, column in enumerate(profile_columns):
        edges = np.asarray(column.edges)
        values = rows[:, i].astype(np.float64)
        assert len(column.counts) == len(edges) + 1
        expected = np.bincount(
            np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1
        )
        assert list(column.counts) == expected.tolist()
        # Quantile bins: no bin holds much more than its tenth of the rows.
        assert max(column.counts) <= 0.2 * len(rows)


def test_the_evaluation_set_makes_the_classifier_s_profile(onnx_models: ModelSet) -> None:
    model = onnx_models.classifier
    result = build(
        model.onnx_path.read_bytes(), eval_set=EvalSet.from_arrays(model.X_eval, model.y_eval)
    )
    profile = result.profile
    assert profile is not None
    assert result.report["profile_source"] == "evaluation set"
    assert profile.rows == len(model.X_eval)
    (name,) = profile.inputs
    assert name == model.input_name
    _check_columns(profile.inputs[name].columns, model.X_eval)
    assert len(profile.inputs[name].columns) == min(model.n_features, MAX_PROFILE_COLUMNS)
    session = ort.InferenceSession(str(model.onnx_path), providers=["CPUExecutionProvider"])
    labels = session.run(None, {name: model.X_eval})[0]
    values, counts = np.unique(labels, return_counts=True)
    assert profile.output is not None
    assert profile.output.classes == {str(v): int(c) for v, c in zip(values, counts, strict=True)}


def test_reference_rows_make_the_profile_instead_and_a_regressor_bins_its_output(
    onnx_models: ModelSet,
) -> None:
    model = onnx_models.regressor
    reference = model.X_eval + 3.0
    result = build(
        model.onnx_path.read_bytes(),
        eval_set=EvalSet.from_arrays(model.X_eval, model.y_eval),
        reference_rows=reference,
    )
    profile = result.profile
    assert profile is not None
    assert result.report["profile_source"] == "reference set"
    _check_columns(profile.inputs[model.input_name].columns, reference)
    assert profile.output is not None
    assert profile.output.bins is not None
    assert sum(profile.output.bins.counts) == len(reference)


def test_no_evaluation_set_and_no_reference_make_no_profile(onnx_models: ModelSet) -> None:
    result = build(onnx_models.classifier.onnx_path.read_bytes())
    assert result.profile is None
    assert result.report["profile_source"] == "none"


@pytest.mark.parametrize(
    ("rows", "complaint"),
    [
        (np.zeros((50, 3), np.float32), "the reference rows has 3 features per row"),
        (np.zeros((5, 32), np.float32), "at least 20"),
        (np.full((50, 32), np.nan, np.float32), "NaN"),
        (np.zeros(50, np.float32), "2-D"),
    ],
)
def test_reference_rows_that_do_not_fit_are_refused(
    onnx_models: ModelSet, rows: np.ndarray[Any, Any], complaint: str
) -> None:
    with pytest.raises(InvalidInputError, match=complaint):
        build(onnx_models.classifier.onnx_path.read_bytes(), reference_rows=rows)


async def test_a_push_with_reference_rows_signs_their_profile(
    api: Api, onnx_models: ModelSet
) -> None:
    model = onnx_models.classifier
    buffer = io.BytesIO()
    np.savez(buffer, X=model.X_eval[:100])
    body = part("model", model.onnx_path.read_bytes()) + part("reference", buffer.getvalue()) + END
    response = await api.client.post(
        "/v1/models/m/versions",
        data=body,
        headers={**api.auth(), "Content-Type": MULTIPART},
    )
    assert response.status == 201, await response.text()
    (record,) = await api.ctx.storage.releases("m")
    release = Release.from_dict(Envelope.from_bytes(record.envelope).signed)
    assert release.profile is not None
    assert release.profile.rows == 100
    assert release.build["profile_source"] == "reference set"
