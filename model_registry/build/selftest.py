"""The golden self-test a device must reproduce before it serves a release.

Inputs are a few evaluation rows, or seeded synthetic rows matching the input schema; the
expected outputs are what the final artifact (int8 or pass-through) returns on them here.

Tolerances (decimal strings; signed content carries no floats). Integer outputs such as labels
must match exactly, so for classifiers rows are picked whose top two scores are at least
`MIN_MARGIN` apart: a device whose float arithmetic differs in the last bits cannot flip them.
Float outputs must satisfy |actual - expected| <= atol + rtol * |expected|, with atol scaled
by the largest expected magnitude (at least 1) so that large-valued regression outputs are
judged relative to their size:
* float models: atol 1e-4 x scale, rtol 1e-3. Other onnxruntime versions or CPUs (FMA, SIMD
  width, summation order) move float32 results by ~1e-6 relative; a wrong model moves them by
  far more.
* int8 models: atol 2e-2 x scale, rtol 1e-2. Quantized activations are rounded to one of 256
  steps (at run time for dynamic quantization, at calibrated scales for static QDQ); a kernel
  that computes x/scale a last bit differently moves one activation by one step, and that
  shows in the outputs. 7-bit weights keep the integer products exact on every CPU, so only
  such rounding steps remain. Measured on the 32-256-256 MLP of the tests: inputs scaled by
  1 + 1e-6 (several ulps, more than kernels differ by) moved int8 probabilities by < 1e-6;
  by 1 + 1e-5 (far more) at most 1.3e-3 (dynamic) and 8.8e-3 (static QDQ). 2e-2 leaves margin
  and still catches a wrong model, which typically moves them by far more.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_protocol import SelfTest, TensorData, TensorSpec
from edge_protocol.errors import MetadataFormatError
from model_registry.build.evaluate import detect_task
from model_registry.build.runtime import FLOAT_DATATYPES, NUMPY_DTYPES, LoadedModel, run
from model_registry.errors import BuildError, InvalidInputError, InvalidModelError

DEFAULT_ROWS = 4
SYNTHETIC_SEED = 20240601
SYNTHETIC_POOL = 64  # candidate synthetic rows, of which the clearest decisions are kept
EVAL_POOL = 256  # evaluation rows considered, bounding the cost of picking
MIN_MARGIN = 0.1  # well above how far int8 tolerances let a probability move
FLOAT_TOLERANCE = ("1e-4", "1e-3")
INT8_TOLERANCE = ("2e-2", "1e-2")
_DATATYPES = {np.dtype(dtype): name for name, dtype in NUMPY_DTYPES.items()}


def make_selftest(
    model: LoadedModel,
    *,
    quantized: bool,
    rows: NDArray[Any] | None = None,
    count: int = DEFAULT_ROWS,
) -> SelfTest:
    """Run `model` on a few rows (evaluation rows, else seeded synthetic ones) and record it."""
    if count < 1:
        raise InvalidInputError(f"a self-test needs at least one row, not {count}")
    feeds = _pick_feeds(model, _candidate_feeds(model, rows, count), count)
    outputs = run(model, feeds)
    expected = [
        tensor_data(spec.name, outputs[spec.name])
        for spec in model.io.outputs
        if spec.datatype != "BYTES"  # strings have no fixed layout in a self-test
    ]
    if not expected:
        raise InvalidModelError("every output is a string tensor, which a self-test cannot carry")
    atol, rtol = _tolerances(outputs, model, quantized)
    selftest = SelfTest(
        inputs=tuple(tensor_data(name, value) for name, value in feeds.items()),
        outputs=tuple(expected),
        atol=atol,
        rtol=rtol,
    )
    try:
        # Round-trip through the parser devices use, so a release never carries a bad self-test.
        return SelfTest.from_dict(selftest.to_dict(), "selftest")
    except MetadataFormatError as e:
        raise BuildError(f"the self-test cannot be encoded: {e}") from e


def tensor_data(name: str, value: NDArray[Any]) -> TensorData:
    """Encode an array as raw little-endian row-major bytes."""
    array = np.asarray(value)
    datatype = _DATATYPES.get(array.dtype.newbyteorder("="))
    if datatype is None:
        raise BuildError(f"tensor {name!r} has dtype {array.dtype}, which a self-test cannot carry")
    if datatype in FLOAT_DATATYPES and not np.all(np.isfinite(array)):
        raise BuildError(f"the model's {name!r} is not finite on the self-test rows")
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return TensorData(name, datatype, tuple(int(d) for d in array.shape), little.tobytes())


def synthetic_tensor(spec: TensorSpec, rows: int, rng: np.random.Generator) -> NDArray[Any]:
    """Draw a tensor matching `spec`: `rows` in the first variable dimension, 1 in the others."""
    shape = [rows if i == 0 and dim == -1 else max(dim, 1) for i, dim in enumerate(spec.shape)]
    dtype = NUMPY_DTYPES.get(spec.datatype)
    if dtype is None:
        raise InvalidModelError(
            f"input {spec.name!r} is {spec.datatype}, which a self-test cannot carry"
        )
    if spec.datatype in FLOAT_DATATYPES:
        return rng.standard_normal(shape).astype(dtype)
    if spec.datatype == "BOOL":
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    return rng.integers(0, 10, size=shape).astype(dtype)


def _candidate_feeds(
    model: LoadedModel, rows: NDArray[Any] | None, count: int
) -> dict[str, NDArray[Any]]:
    inputs = model.io.inputs
    if rows is not None:
        spec = model.feature_input
        return {spec.name: rows[:EVAL_POOL].astype(NUMPY_DTYPES[spec.datatype])}
    rng = np.random.default_rng(SYNTHETIC_SEED)
    pool = SYNTHETIC_POOL if len(inputs) == 1 and inputs[0].shape[:1] == (-1,) else count
    return {spec.name: synthetic_tensor(spec, pool, rng) for spec in inputs}


def _pick_feeds(
    model: LoadedModel, feeds: dict[str, NDArray[Any]], count: int
) -> dict[str, NDArray[Any]]:
    if len(feeds) != 1:
        return feeds  # several inputs: drawn with `count` rows already
    (name, pool), scores = next(iter(feeds.items())), _class_scores(model, feeds)
    if scores is None:
        return {name: pool[:count]}
    top2 = np.sort(scores, axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    clear = np.flatnonzero(margin >= MIN_MARGIN)
    # Clear decisions in their original order first, then the clearest of the rest.
    rest = [i for i in np.argsort(-margin, kind="stable") if margin[i] < MIN_MARGIN]
    chosen = np.sort(np.concatenate([clear, np.asarray(rest, dtype=np.int64)])[:count])
    return {name: pool[chosen]}


def _class_scores(model: LoadedModel, feeds: dict[str, NDArray[Any]]) -> NDArray[Any] | None:
    if detect_task(model.io) != "classifier":
        return None
    outputs = run(model, feeds)
    for spec in model.io.outputs:
        value = outputs[spec.name]
        if spec.datatype in FLOAT_DATATYPES and value.ndim == 2 and value.shape[1] >= 2:
            return value.astype(np.float64)
    return None


def _tolerances(
    outputs: dict[str, NDArray[Any]], model: LoadedModel, quantized: bool
) -> tuple[str, str]:
    base_atol, rtol = INT8_TOLERANCE if quantized else FLOAT_TOLERANCE
    floats = [outputs[s.name] for s in model.io.outputs if s.datatype in FLOAT_DATATYPES]
    scale = max([1.0, *(float(np.max(np.abs(v))) for v in floats if v.size)])
    return _decimal(float(base_atol) * scale), rtol


def _decimal(value: float) -> str:
    # Three significant digits, in a spelling the release parser accepts ("0.0001", "2.5e-05").
    return format(value, ".3g")
