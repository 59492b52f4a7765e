"""Pushing a file that is not ONNX: the error says what the file is and what to do instead."""

from __future__ import annotations

import gzip
import io
import pickle
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from aiohttp import FormData

from tests.registry.conftest import Api
from tests.support.broker import LOCALHOST, free_port
from tests.support.models import ModelSet
from tests.support.registry import RegistryProcess, cli, cli_json


def _joblib(estimator: Any, **options: Any) -> bytes:
    out = io.BytesIO()
    joblib.dump(estimator, out, **options)
    return out.getvalue()


def _npz() -> bytes:
    out = io.BytesIO()
    np.savez(out, X=np.zeros((2, 3), np.float32))
    return out.getvalue()


def _zip() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps([1, 2]))
    return out.getvalue()


Maker = Callable[[ModelSet], bytes]


@dataclass(frozen=True)
class NotOnnx:
    """A file that is not ONNX, what the error must call it, and if build-sklearn is advised."""

    name: str
    make: Maker
    kind: str
    sklearn: bool


FILES = [
    NotOnnx("joblib", lambda m: _joblib(m.classifier.estimator), "a joblib/pickle file", True),
    NotOnnx("joblib-zlib", lambda m: _joblib(m.classifier.estimator, compress=3), "zlib", True),
    NotOnnx("joblib-gzip", lambda m: _joblib(m.regressor.estimator, compress="gzip"), "gzip", True),
    NotOnnx("pickle", lambda m: pickle.dumps(m.regressor.estimator), "a joblib/pickle file", True),
    NotOnnx("torch-like zip", lambda _m: _zip(), "PyTorch checkpoint", False),
    NotOnnx("npz", lambda _m: _npz(), "NumPy .npz archive", False),
    NotOnnx("gzip text", lambda _m: gzip.compress(b"hello"), "gzip", True),
    NotOnnx("text", lambda _m: b"ir_version: 8\ngraph {\n}\n", "a text file", False),
    NotOnnx("json", lambda _m: b'{"model": "clf"}', "a JSON document", False),
]
IDS = [f.name for f in FILES]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A registry home with `serve` running on the embedded broker."""
    home = tmp_path_factory.mktemp("not-onnx") / "home"
    cli("init", "--home", str(home))
    registry = RegistryProcess(home, ("--embedded-broker", f"{LOCALHOST}:{free_port()}"))
    registry.start()
    yield home
    registry.stop()


@pytest.mark.parametrize("case", FILES, ids=IDS)
def test_push_of_a_non_onnx_file_says_what_it_is(
    served: Path, onnx_models: ModelSet, tmp_path: Path, case: NotOnnx
) -> None:
    path = tmp_path / "model.joblib"
    path.write_bytes(case.make(onnx_models))
    result = cli("push", str(path), "--name", "clf", "--home", str(served), check=False)
    assert result.returncode == 1, result.stdout
    assert f"{path} is not an ONNX model: it looks like" in result.stderr
    assert case.kind in result.stderr
    assert ("model-registry build-sklearn" in result.stderr) is case.sklearn
    assert result.stderr.count("\n") == 1
    assert cli_json("models", "--home", str(served))["models"] == []


def test_push_of_an_empty_file_says_it_is_empty(served: Path, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"")
    result = cli("push", str(path), "--name", "clf", "--home", str(served), check=False)
    assert result.returncode == 1
    assert f"{path} is empty" in result.stderr


def test_a_real_model_still_pushes(served: Path, onnx_models: ModelSet) -> None:
    path = str(onnx_models.regressor.onnx_path)
    assert cli_json("push", path, "--name", "reg", "--home", str(served))["version"] == 1


@pytest.mark.parametrize("case", FILES, ids=IDS)
async def test_upload_of_a_non_onnx_file_is_a_400_naming_it(
    api: Api, onnx_models: ModelSet, case: NotOnnx
) -> None:
    form = FormData()
    form.add_field("model", case.make(onnx_models), filename="model.onnx")
    response = await api.client.post("/v1/models/m/versions", data=form, headers=api.auth())
    assert response.status == 400, await response.text()
    error = (await response.json())["error"]
    assert error.startswith("the model is not an ONNX model: it looks like")
    assert case.kind in error
    assert ("build-sklearn" in error) is case.sklearn
    assert await api.ctx.storage.models() == []
