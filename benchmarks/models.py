"""The benchmark models, built offline and cached in benchmarks/.cache/models.

* small: a scikit-learn MLPClassifier (32 features, hidden 256-256, 3 classes) converted and
  quantized to int8 by the registry's own pipeline (`model_registry.build`).
* heavy: an MLPClassifier 256 -> 1024 -> 1024 -> 1024 -> 10 (3 epochs), fp32 and int8.
* tree: a GradientBoostingRegressor (32 features, 100 trees), through the same pipeline.
* update-N: ~4 MiB random MLPs (32 -> 1024 -> 1024 -> 3) for update propagation, one per seed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import CACHE, log

MODELS = CACHE / "models"
RECIPE_VERSION = "4"  # bump to rebuild every cached model
SEED = 7


@dataclass(frozen=True)
class Model:
    """A model file and the held-out rows it is judged on."""

    name: str
    path: Path
    fp32_path: Path
    X_eval: np.ndarray[Any, Any]
    y_eval: np.ndarray[Any, Any]

    @property
    def n_features(self) -> int:
        """Columns of one row."""
        return int(self.X_eval.shape[1])


def _dataset(n_samples: int, n_features: int, n_classes: int, informative: int) -> Any:
    from sklearn.datasets import make_classification  # noqa: PLC0415 - heavy import
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    features, labels = make_classification(
        n_samples=n_samples,
        n_features=n_features,
        n_informative=informative,
        n_redundant=0,
        n_classes=n_classes,
        class_sep=1.5,
        random_state=SEED,
    )
    return train_test_split(features.astype(np.float32), labels, test_size=0.25, random_state=SEED)


def _registry_build(estimator: Any, x_train: Any, x_eval: Any, y_eval: Any) -> tuple[bytes, bytes]:
    """(fp32, int8) bytes through model_registry.build, as `model-registry push --quantize`."""
    from model_registry.build import EvalSet, build, convert_estimator  # noqa: PLC0415

    converted = convert_estimator(estimator, x_train[:256])
    result = build(
        converted.model_bytes,
        quantize="int8",
        eval_set=EvalSet.from_arrays(x_eval, y_eval),
        accuracy_limit_points=100.0,  # the benchmark reports the drop itself
        source="sklearn",
        conversion=converted.report,
    )
    return converted.model_bytes, result.artifact


def _mlp(hidden: tuple[int, ...], max_iter: int, data: Any) -> Any:
    from sklearn.exceptions import ConvergenceWarning  # noqa: PLC0415
    from sklearn.neural_network import MLPClassifier  # noqa: PLC0415

    x_train, _, y_train, _ = data
    estimator = MLPClassifier(
        hidden_layer_sizes=hidden, max_iter=max_iter, batch_size=128, random_state=SEED
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(x_train, y_train)
    return estimator


def _regression(n_samples: int, n_features: int) -> Any:
    from sklearn.datasets import make_regression  # noqa: PLC0415
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    features, targets = make_regression(
        n_samples=n_samples, n_features=n_features, n_informative=16, noise=5.0,
        random_state=SEED,
    )  # fmt: skip
    return train_test_split(features.astype(np.float32), targets, test_size=0.25,
                            random_state=SEED)  # fmt: skip


def _tree(data: Any) -> Any:
    # A regressor: skl2onnx 1.20 cannot convert HistGradientBoosting classifiers with numpy 2.
    from sklearn.ensemble import GradientBoostingRegressor  # noqa: PLC0415

    x_train, _, y_train, _ = data
    estimator = GradientBoostingRegressor(n_estimators=100, max_depth=4, random_state=SEED)
    return estimator.fit(x_train, y_train)


RECIPES = {
    "small": lambda: (_dataset(4000, 32, 3, 16), lambda d: _mlp((256, 256), 30, d)),
    "heavy": lambda: (_dataset(4000, 256, 10, 64), lambda d: _mlp((1024, 1024, 1024), 3, d)),
    "tree": lambda: (_regression(4000, 32), _tree),
}


def _recipe_key() -> str:
    """The recipe version and a hash of the registry's build pipeline: a change to either
    (a new quantizer step, say) rebuilds the cached models."""
    import model_registry.build  # noqa: PLC0415

    digest = hashlib.sha256(RECIPE_VERSION.encode())
    for source in sorted(Path(model_registry.build.__file__).parent.glob("*.py")):
        digest.update(source.name.encode() + source.read_bytes())
    return digest.hexdigest()


def model(name: str) -> Model:
    """The cached model `name` (small, heavy or tree), built on first use."""
    directory = MODELS / name
    stamp = directory / "recipe.json"
    fp32, int8, data_file = directory / "fp32.onnx", directory / "int8.onnx", directory / "eval.npz"
    key = _recipe_key()
    if not (stamp.exists() and json.loads(stamp.read_text()).get("version") == key):
        log(f"building the {name} model (cached in {directory})")
        directory.mkdir(parents=True, exist_ok=True)
        make_data, make_estimator = RECIPES[name]()
        data = make_data
        estimator = make_estimator(data)
        x_train, x_eval, _, y_eval = data
        fp32_bytes, int8_bytes = _registry_build(estimator, x_train, x_eval, y_eval)
        fp32.write_bytes(fp32_bytes)
        int8.write_bytes(int8_bytes)
        np.savez(data_file, X=x_eval, y=y_eval)
        stamp.write_text(json.dumps({"version": key}))
    arrays = np.load(data_file)
    return Model(name, int8, fp32, arrays["X"], arrays["y"])


def with_batch_dim_names(path: Path) -> Path:
    """A copy of `path` whose inputs and outputs all call dimension 0 "N".

    onnxruntime's quantizer leaves the outputs' first dimensions as `unk__0`, `unk__1`, ...
    (one name each), which the agent reads as "not the same batch axis": this copy shows what
    restoring one shared name gives (diagnostics only; the graph is unchanged).
    """
    import onnx  # noqa: PLC0415

    out = path.with_name(path.stem + "-batchdims.onnx")
    if out.exists() and out.stat().st_mtime >= path.stat().st_mtime:
        return out
    proto = onnx.load(str(path))
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_param = "N"
    onnx.save(proto, str(out))
    return out


def update_model(seed: int, hidden: int = 1024) -> bytes:
    """A ~4 MiB random MLP (32 -> hidden -> hidden -> 3, softmax), distinct per seed."""
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    sizes = [32, hidden, hidden, 3]
    nodes, inits = [], []
    current = "X"
    for layer, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        weight = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        bias = (rng.standard_normal(n_out) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(weight, f"W{layer}"),
                  numpy_helper.from_array(bias, f"B{layer}")]  # fmt: skip
        nodes.append(helper.make_node("MatMul", [current, f"W{layer}"], [f"m{layer}"]))
        nodes.append(helper.make_node("Add", [f"m{layer}", f"B{layer}"], [f"a{layer}"]))
        current = f"a{layer}"
        if layer < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [current], [f"r{layer}"]))
            current = f"r{layer}"
    nodes.append(helper.make_node("Softmax", [current], ["probabilities"], axis=1))
    graph = helper.make_graph(
        nodes,
        f"update-{seed}",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 32])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 3])],
        inits,
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx_model.ir_version = 8
    return bytes(onnx_model.SerializeToString())


def update_model_file(seed: int, hidden: int = 1024) -> Path:
    """update_model(seed, hidden) written to the cache."""
    name = f"update-{seed}.onnx" if hidden == 1024 else f"update-{seed}-h{hidden}.onnx"
    path = MODELS / "updates" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(update_model(seed, hidden))
    return path
