"""Drift counts on the device: inputs in the release's bins and predictions, as numpy says."""

from __future__ import annotations

from typing import Any

import numpy as np

from edge_agent.uplink.drift import BINS_BUDGET_BYTES, MERGE_ROWS, DriftCounts, fit_bins
from edge_protocol import Bins, InputProfile, ModelIO, OutputProfile, Profile, TensorSpec

RNG = np.random.default_rng(18)
CLASSIFIER_IO = ModelIO(
    inputs=(TensorSpec("X", "FP32", (-1, 3)),),
    outputs=(TensorSpec("label", "INT64", (-1,)), TensorSpec("probabilities", "FP32", (-1, 2))),
)
REGRESSOR_IO = ModelIO(
    inputs=(TensorSpec("X", "FP32", (-1, 3)),), outputs=(TensorSpec("variable", "FP32", (-1, 1)),)
)


def _profile(output: OutputProfile | None = None) -> Profile:
    columns = (
        Bins((-1.0, 0.0, 1.0), (1, 1, 1, 1)),
        Bins((0.5,), (1, 1)),  # fewer bins than the others: padded on the device
        Bins(tuple(np.linspace(-2, 2, 9).tolist()), (1,) * 10),
    )
    return Profile(rows=10, inputs={"X": InputProfile(columns)}, output=output)


def _expected(rows: Any, profile: Profile) -> list[list[int]]:
    """Counts computed independently: searchsorted per column on the finite values."""
    out = []
    for i, column in enumerate(profile.inputs["X"].columns):
        values = rows[:, i][np.isfinite(rows[:, i])]
        index = np.searchsorted(column.edges, values, side="right")
        out.append(np.bincount(index, minlength=len(column.counts)).tolist())
    return out


def test_inputs_are_counted_in_the_profile_s_bins_across_blocks() -> None:
    profile = _profile()
    counts = DriftCounts()
    requests = [RNG.normal(size=(n, 3)).astype(np.float32) for n in (1, 5, 70, 1, 3)]
    requests[1][2, 0] = np.nan  # non-finite values are not counted
    requests[3][0, 2] = np.inf
    requests.append(np.array([[-1.0, 0.5, 2.0]], dtype=np.float32))  # exactly on edges
    for request in requests:
        counts.add_inputs("m", 2, profile, {"X": request})
    fields = counts.take()[("m", 2)]
    assert fields["bins"]["X"] == _expected(np.concatenate(requests).astype(np.float64), profile)
    assert sum(fields["bins"]["X"][0]) == sum(len(r) for r in requests) - 1
    assert counts.take() == {}  # the next interval starts empty
    assert MERGE_ROWS < 70  # the block path was taken as well as the kept rows


def test_a_classifier_s_classes_are_counted_without_a_profile() -> None:
    counts = DriftCounts()
    counts.add_inputs("m", 1, None, {"X": np.zeros((3, 3), np.float32)})
    for labels in ([0, 1, 1], [2], [1]):
        outputs = {"label": np.array(labels, np.int64), "probabilities": np.zeros((1, 2))}
        counts.add_outputs("m", 1, outputs, CLASSIFIER_IO)
    assert counts.take() == {
        ("m", 1): {"predictions": {"output": "label", "classes": {"0": 1, "1": 3, "2": 1}}}
    }


def test_a_regressor_s_predictions_go_in_the_profile_s_output_bins() -> None:
    profile = _profile(OutputProfile("variable", bins=Bins((0.0, 1.0), (1, 1, 1))))
    counts = DriftCounts()
    counts.add_inputs("m", 3, profile, {"X": np.zeros((4, 3), np.float32)})
    values = np.array([[-0.5], [0.0], [0.7], [np.nan], [3.0], [1.0]], np.float32)
    counts.add_outputs("m", 3, {"variable": values}, REGRESSOR_IO)
    fields = counts.take()[("m", 3)]
    assert fields["predictions"] == {"output": "variable", "bins": [1, 2, 2]}
    assert fields["bins"]["X"][0] == [0, 0, 4, 0]


def test_a_regressor_without_a_profile_sends_no_predictions() -> None:
    counts = DriftCounts()
    counts.add_inputs("m", 1, None, {"X": np.zeros((1, 3), np.float32)})
    counts.add_outputs("m", 1, {"variable": np.ones((1, 1), np.float32)}, REGRESSOR_IO)
    assert counts.take() == {}


def test_a_narrower_request_than_the_profile_is_not_binned() -> None:
    counts = DriftCounts()
    counts.add_inputs("m", 1, _profile(), {"X": np.zeros((2, 2), np.float32)})
    assert counts.take()[("m", 1)]["bins"]["X"] == [[0] * 4, [0] * 2, [0] * 10]


def test_bins_over_their_budget_are_left_out_and_said_so() -> None:
    wide = [[123456] * 16] * 64
    body: dict[str, Any] = {
        "models": {
            f"m{i}": {"versions": {"1": {"requests": 1, "bins": {"X": wide}}}} for i in range(8)
        }
    }
    assert len(str(wide)) * 8 > BINS_BUDGET_BYTES
    fitted = fit_bins(body)
    assert fitted["bins_dropped"] is True
    assert all("bins" not in m["versions"]["1"] for m in fitted["models"].values())
    small: dict[str, Any] = {"models": {"m": {"versions": {"1": {"bins": {"X": [[1, 2]]}}}}}}
    assert "bins_dropped" not in fit_bins(small)
