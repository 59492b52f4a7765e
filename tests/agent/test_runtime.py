"""The runtime: io schema derivation, LoadedModel, the repository's swap and leases."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import (
    InvalidRequestError,
    ModelLoadError,
    ModelNotFoundError,
    ModelNotReadyError,
    UnsupportedModelError,
)
from edge_agent.runtime import (
    LoadedModel,
    ModelRepository,
    RuntimeOptions,
    load_model,
    oip_datatype,
    oip_shape,
    shares_batch_axis,
)
from edge_agent.runtime.iospec import Dim
from edge_protocol.errors import ExternalDataError
from tests.agent.conftest import load, ort_outputs
from tests.support import external_data
from tests.support.models import BuiltModel, ModelSet


@dataclass(frozen=True)
class Arg:
    """An io description shaped like onnxruntime's NodeArg."""

    name: str
    type: str
    shape: Sequence[Dim]


@pytest.mark.parametrize(
    ("ort_type", "datatype"),
    [
        ("tensor(float)", "FP32"),
        ("tensor(double)", "FP64"),
        ("tensor(float16)", "FP16"),
        ("tensor(int64)", "INT64"),
        ("tensor(uint8)", "UINT8"),
        ("tensor(bool)", "BOOL"),
        ("tensor(string)", "BYTES"),
    ],
)
def test_ort_types_map_to_oip_datatypes(ort_type: str, datatype: str) -> None:
    assert oip_datatype(ort_type) == datatype


@pytest.mark.parametrize(
    "ort_type", ["seq(map(int64,tensor(float)))", "tensor(bfloat16)", "map(string,float)"]
)
def test_types_oip_cannot_express_are_refused(ort_type: str) -> None:
    with pytest.raises(UnsupportedModelError, match="ZipMap"):
        oip_datatype(ort_type)


def test_symbolic_and_unknown_dims_become_minus_one() -> None:
    assert oip_shape([None, "batch", 32, 0, -1]) == (-1, -1, 32, -1, -1)


@pytest.mark.parametrize(
    ("inputs", "outputs", "batchable"),
    [
        ([[None, 32]], [[None], [None, 3]], True),
        ([["N", 3], ["N"]], [["N", 2]], True),
        ([["N", 3], [None]], [["N"]], True),
        ([[1, 32]], [[1]], False),  # fixed batch of one
        ([["N", 3], ["M"]], [["N"]], False),  # two different variable first dims
        ([[None, 3]], [[]], False),  # a scalar output cannot be split
        ([[]], [[None]], False),
        ([[None, 3]], [[3]], False),
    ],
)
def test_batch_axis_detection(
    inputs: list[list[Dim]], outputs: list[list[Dim]], batchable: bool
) -> None:
    ins = [Arg(f"i{k}", "tensor(float)", s) for k, s in enumerate(inputs)]
    outs = [Arg(f"o{k}", "tensor(float)", s) for k, s in enumerate(outputs)]

    assert shares_batch_axis(ins, outs) is batchable


def test_loaded_model_describes_itself_and_runs_like_onnxruntime(onnx_models: ModelSet) -> None:
    built = onnx_models.classifier
    model = load_model(
        built.onnx_path, name="clf", version=4, options=RuntimeOptions(intra_op_threads=2)
    )

    assert (model.name, model.version) == ("clf", 4)
    assert model.sha256 == hashlib.sha256(built.onnx_path.read_bytes()).hexdigest()
    assert model.io.to_dict() == {
        "inputs": [{"name": "X", "datatype": "FP32", "shape": [-1, 32]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        ],
    }
    assert model.batchable
    assert model.providers == ("CPUExecutionProvider",)
    got = model.run({"X": built.X_eval})
    expected = ort_outputs(built.onnx_path, {"X": built.X_eval})
    for name in ("label", "probabilities"):
        np.testing.assert_array_equal(got[name], expected[name])
    assert set(model.run({"X": built.X_eval}, ["label"])) == {"label"}
    model.warm_up(rows=3)


def test_load_refuses_bytes_that_are_not_the_verified_ones(onnx_models: ModelSet) -> None:
    with pytest.raises(ModelLoadError, match="does not match"):
        load_model(onnx_models.regressor.onnx_path, name="r", version=1, expected_sha256="0" * 64)


def test_load_from_bytes_with_matching_hash(onnx_models: ModelSet) -> None:
    data = onnx_models.regressor.onnx_path.read_bytes()

    model = load_model(data, name="r", version=1, expected_sha256=hashlib.sha256(data).hexdigest())

    assert model.io.inputs[0].shape == (-1, 8)


@pytest.mark.parametrize("source", [b"not an onnx model", Path("/nonexistent/model.onnx")])
def test_unloadable_models_raise_model_load_error(source: bytes | Path) -> None:
    with pytest.raises(ModelLoadError):
        load_model(source, name="bad", version=1)


@pytest.mark.parametrize("variant", sorted(external_data.LOADED_BY_ONNXRUNTIME))
def test_models_with_external_data_are_refused_before_any_session(
    variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # onnxruntime resolves a relative location against the working directory.
    secret = b"mqtt-password-of-the-device\n"
    (tmp_path / "mqtt-password").write_bytes(secret)
    monkeypatch.chdir(tmp_path)
    model = external_data.LOADED_BY_ONNXRUNTIME[variant]("mqtt-password", len(secret))

    with pytest.raises(ExternalDataError) as caught:
        load_model(model.SerializeToString(), name="leak", version=1)

    assert caught.value.reason == "external_data"
    assert external_data.WHERE[variant] in str(caught.value)


def test_a_model_cut_short_is_a_load_error_naming_the_cause(onnx_models: ModelSet) -> None:
    data = onnx_models.classifier.onnx_path.read_bytes()
    with pytest.raises(ModelLoadError, match="not a well-formed ONNX model"):
        load_model(data[: len(data) // 2], name="cut", version=1)


def test_unavailable_providers_fall_back_to_cpu(onnx_models: ModelSet) -> None:
    options = RuntimeOptions(
        execution_providers=("CUDAExecutionProvider", "TensorrtExecutionProvider")
    )

    model = load_model(onnx_models.regressor.onnx_path, name="r", version=1, options=options)

    assert model.providers == ("CPUExecutionProvider",)
    assert options.providers[-1] == "CPUExecutionProvider"


def test_onnxruntime_rejections_of_input_values_are_invalid_requests(gather_model: Path) -> None:
    model = load_model(gather_model, name="gather", version=1)

    np.testing.assert_array_equal(model.run({"idx": np.array([2, 3])})["value"], [3.0, 4.5])
    with pytest.raises(InvalidRequestError, match="out of data bounds"):
        model.run({"idx": np.array([99])})


def test_swap_retires_the_old_model_once_its_leases_are_returned(
    onnx_models: ModelSet, classifier_v2: BuiltModel
) -> None:
    repo = ModelRepository()
    events: list[tuple[str, int | None, int | None]] = []
    repo.add_listener(lambda n, o, m: events.append((n, o and o.version, m and m.version)))
    v1, v2 = load(onnx_models.classifier, 1), load(classifier_v2, 2)
    assert repo.swap("classifier", v1) is None

    with repo.lease("classifier") as leased:
        assert repo.swap("classifier", v2) is v1
        assert leased is v1
        assert not v1.released
        leased.run({"X": onnx_models.classifier.X_eval[:1]})
        with repo.lease("classifier", "2") as new:
            assert new is v2
    assert v1.released
    assert v1.in_flight == 0
    assert not v2.released
    assert events == [("classifier", None, 1), ("classifier", 1, 2)]
    with pytest.raises(ModelNotReadyError):
        v1.run({"X": onnx_models.classifier.X_eval[:1]})


def test_lease_errors(onnx_models: ModelSet) -> None:
    repo = ModelRepository()
    repo.swap("classifier", load(onnx_models.classifier, 1))

    with pytest.raises(ModelNotFoundError, match="no model named 'x'"), repo.lease("x"):
        pass
    with (
        pytest.raises(ModelNotFoundError, match="version 1 is being served"),
        repo.lease("classifier", "2"),
    ):
        pass
    assert repo.get("classifier").in_flight == 0


def test_swap_refuses_wrong_name_and_released_models(onnx_models: ModelSet) -> None:
    repo = ModelRepository()
    model = load(onnx_models.classifier, 1)

    with pytest.raises(ValueError, match="under the name"):
        repo.swap("other", model)
    model.retire()
    with pytest.raises(ValueError, match="released"):
        repo.swap("classifier", model)


def test_remove_and_close_retire_models(onnx_models: ModelSet) -> None:
    repo = ModelRepository()
    clf, reg = load(onnx_models.classifier), load(onnx_models.regressor)
    repo.swap("classifier", clf)
    repo.swap("regressor", reg)

    assert repo.remove("classifier") is clf
    assert clf.released
    assert repo.names() == ["regressor"]
    repo.close()
    assert reg.released
    assert repo.names() == []


def test_a_broken_listener_does_not_undo_a_swap(onnx_models: ModelSet) -> None:
    repo = ModelRepository()
    repo.add_listener(lambda *_: 1 / 0)  # type: ignore[arg-type,return-value]
    model = load(onnx_models.regressor)

    repo.swap("regressor", model)

    assert repo.get("regressor") is model


async def test_wait_released_wakes_when_the_last_lease_returns(onnx_models: ModelSet) -> None:
    model: LoadedModel = load(onnx_models.regressor)
    model.acquire()
    model.retire()
    waiter = asyncio.create_task(model.wait_released())
    await asyncio.sleep(0)
    assert not waiter.done()

    await asyncio.to_thread(model.release)  # from another thread, as an executor would

    await asyncio.wait_for(waiter, 10)
    await model.wait_released()  # already released: returns at once
    with pytest.raises(ModelNotReadyError):
        model.acquire()
