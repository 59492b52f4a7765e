"""Small ONNX classifiers sharing one io schema, each misbehaving in one way probation judges.

Every model takes `X` FP32 [N, 4] and answers `label` INT64 [N] (the best of three scores) and
`scores` FP32 [N, 3], so any of them can replace any other as a new version of one model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FEATURES = 4
CLASSES = 3
KINDS = ("good", "collapse", "nonfinite", "slow", "failing", "erratic")
OPSET = [helper.make_opsetid("", 17)]
SLOW_WIDTH = 512


def _weights(seed: int, *shape: int) -> np.ndarray:  # type: ignore[type-arg]
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def _scores(kind: str, slow_steps: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes computing `scores` from `X` for one kind of model."""
    w = numpy_helper.from_array(_weights(1, FEATURES, CLASSES), "W")
    if kind == "good":
        return [helper.make_node("MatMul", ["X", "W"], ["scores"])], [w]
    if kind == "collapse":  # a bias no input outweighs: class 0, always
        bias = numpy_helper.from_array(np.array([1e6, 0, 0], dtype=np.float32), "B")
        nodes = [helper.make_node("MatMul", ["X", "W"], ["raw"]),
                 helper.make_node("Add", ["raw", "B"], ["scores"])]  # fmt: skip
        return nodes, [w, bias]
    if kind == "nonfinite":  # divided by zero: infinities and NaN
        zero = numpy_helper.from_array(np.zeros(CLASSES, dtype=np.float32), "Z")
        nodes = [helper.make_node("MatMul", ["X", "W"], ["raw"]),
                 helper.make_node("Div", ["raw", "Z"], ["scores"])]  # fmt: skip
        return nodes, [w, zero]
    if kind == "failing":  # rows of 7 values from 3 per input row: fails unless N % 7 == 0
        shape = numpy_helper.from_array(np.array([-1, 7], dtype=np.int64), "S")
        nodes = [helper.make_node("MatMul", ["X", "W"], ["raw"]),
                 helper.make_node("Reshape", ["raw", "S"], ["scores"])]  # fmt: skip
        return nodes, [w, shape]
    if kind == "erratic":  # the failing model's answer when the inputs sum above 0, else good
        return _erratic(w)
    if kind == "slow":
        return _slow(slow_steps)
    raise ValueError(f"unknown kind {kind!r}")


def _erratic(w: onnx.TensorProto) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Good on inputs that sum to 0 or less (zeros: a warm-up passes), failing above."""
    shape = numpy_helper.from_array(np.array([-1, 7], dtype=np.int64), "S")
    zero = numpy_helper.from_array(np.array(0, dtype=np.float32), "zero")
    scores = helper.make_tensor_value_info("scores_branch", TensorProto.FLOAT, None)
    failing = helper.make_graph(
        [helper.make_node("Reshape", ["raw", "S"], ["scores_branch"])], "fails", [], [scores]
    )
    good = helper.make_graph(
        [helper.make_node("Identity", ["raw"], ["scores_branch"])], "good", [], [scores]
    )
    nodes = [
        helper.make_node("MatMul", ["X", "W"], ["raw"]),
        helper.make_node("ReduceSum", ["X"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["positive"]),
        helper.make_node("If", ["positive"], ["scores"], then_branch=failing, else_branch=good),
    ]
    return nodes, [w, shape, zero]


def _slow(steps: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The good model's answer after a Loop of `steps` big MatMuls that add nothing to it."""
    q = numpy_helper.from_array(_weights(2, SLOW_WIDTH, SLOW_WIDTH) * 0.05, "Q")
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["h_in", "Q"], ["mixed"]),
            helper.make_node("Tanh", ["mixed"], ["h_out"]),
        ],
        "steps",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, None),
        ],
    )
    constants = [
        numpy_helper.from_array(_weights(1, FEATURES, CLASSES), "W"),
        numpy_helper.from_array(_weights(3, FEATURES, SLOW_WIDTH), "P"),
        numpy_helper.from_array(np.zeros((SLOW_WIDTH, CLASSES), dtype=np.float32), "R"),
        numpy_helper.from_array(np.array(steps, dtype=np.int64), "M"),
        numpy_helper.from_array(np.array(True), "T"),
        q,
    ]
    nodes = [
        helper.make_node("MatMul", ["X", "P"], ["h0"]),
        helper.make_node("Loop", ["M", "T", "h0"], ["h"], body=body),
        helper.make_node("MatMul", ["h", "R"], ["nothing"]),  # zeros: the answer is unchanged
        helper.make_node("MatMul", ["X", "W"], ["raw"]),
        helper.make_node("Add", ["raw", "nothing"], ["scores"]),
    ]
    return nodes, constants


def probation_model(kind: str, path: Path, *, slow_steps: int = 20000) -> Path:
    """Write the model of `kind` (one of KINDS) to `path`."""
    nodes, constants = _scores(kind, slow_steps)
    nodes.append(helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0))
    graph = helper.make_graph(
        nodes,
        kind,
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", FEATURES])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", CLASSES]),
        ],
        constants,
    )
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path
