"""The registry's build pipeline: scikit-learn -> ONNX -> int8 where it pays -> gate -> self-test.

Everything here blocks (skl2onnx, onnxruntime); the service calls it with `asyncio.to_thread`.
"""

from model_registry.build.convert import (
    DEFAULT_TARGET_OPSET,
    ConversionReport,
    ConvertedModel,
    convert_estimator,
)
from model_registry.build.datasets import EvalSet, load_eval_set, parse_eval_set
from model_registry.build.evaluate import (
    Agreement,
    Evaluation,
    Metrics,
    Task,
    check_gate,
    detect_task,
    evaluate,
)
from model_registry.build.inspect import inspect_model
from model_registry.build.pipeline import BuildResult, build
from model_registry.build.quantize import QuantizationResult, quantize_model
from model_registry.build.runtime import LoadedModel, load_model
from model_registry.build.selftest import make_selftest
from model_registry.build.sklearn_files import build_sklearn_file, load_estimator, load_sample

__all__ = [
    "DEFAULT_TARGET_OPSET",
    "Agreement",
    "BuildResult",
    "ConversionReport",
    "ConvertedModel",
    "EvalSet",
    "Evaluation",
    "LoadedModel",
    "Metrics",
    "QuantizationResult",
    "Task",
    "build",
    "build_sklearn_file",
    "check_gate",
    "convert_estimator",
    "detect_task",
    "evaluate",
    "inspect_model",
    "load_estimator",
    "load_eval_set",
    "load_model",
    "load_sample",
    "make_selftest",
    "parse_eval_set",
    "quantize_model",
]
