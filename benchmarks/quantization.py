"""Section 4: fp32 vs int8 as the registry builds them (size, latency, accuracy, agreement).

Latency is onnxruntime `session.run` alone (1 intra-op, 1 inter-op thread, this process pinned
to one CPU), single row and a batch of 64, fp32 and int8 measured in alternating blocks;
medians of the blocks.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

import numpy as np

from benchmarks.common import SERVER_CPUS, median
from benchmarks.models import model
from benchmarks.peers.ortsession import session


def _time_per_call(sess: Any, feed: dict[str, Any], seconds: float) -> float:
    sess.run(None, feed)
    calls = 0
    began = time.perf_counter()
    while (elapsed := time.perf_counter() - began) < seconds:
        sess.run(None, feed)
        calls += 1
    return elapsed / max(1, calls)


def _predict(sess: Any, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    name = sess.get_inputs()[0].name
    dtype = np.float64 if "double" in sess.get_inputs()[0].type else np.float32
    out: np.ndarray[Any, Any] = sess.run(None, {name: x.astype(dtype)})[0]
    return out


def _quality(name: str, fp32: Any, int8: Any, x: Any, y: Any) -> dict[str, Any]:
    a, b = _predict(fp32, x), _predict(int8, x)
    if name == "tree":
        a, b = a.reshape(-1), b.reshape(-1)
        ss = float(np.sum((y - y.mean()) ** 2))
        r2_a = 1 - float(np.sum((y - a) ** 2)) / ss
        r2_b = 1 - float(np.sum((y - b) ** 2)) / ss
        return {
            "metric": "R^2",
            "fp32": round(r2_a, 4),
            "int8": round(r2_b, 4),
            "drop_points": round((r2_a - r2_b) * 100, 3),  # one point = 0.01 of R^2
            "agreement": round(float(np.mean(np.isclose(a, b, rtol=1e-5, atol=1e-6))), 4),
            "max_abs_diff": float(np.max(np.abs(a - b))),
        }
    acc_a, acc_b = float(np.mean(a == y)), float(np.mean(b == y))
    return {
        "metric": "accuracy",
        "fp32": round(acc_a * 100, 2),
        "int8": round(acc_b * 100, 2),
        "drop_points": round((acc_a - acc_b) * 100, 2),
        "agreement": round(float(np.mean(a == b)), 4),
    }


def run(mode: str) -> dict[str, Any]:
    """Measure every model; return the results document."""
    seconds, blocks = (0.15, 3) if mode == "quick" else (0.5, 5)
    cpus = {int(c) for c in SERVER_CPUS.split(",")}
    previous = os.sched_getaffinity(0)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, cpus)
    rows = []
    try:
        for name in ("small", "heavy", "tree"):
            built = model(name)
            fp32, int8 = session(str(built.fp32_path)), session(str(built.path))
            dtype = np.float64 if "double" in fp32.get_inputs()[0].type else np.float32
            input_name = fp32.get_inputs()[0].name
            latency: dict[str, dict[str, float]] = {}
            for batch in (1, 64):
                feed = {input_name: built.X_eval[:batch].astype(dtype)}
                times: dict[str, list[float]] = {"fp32": [], "int8": []}
                for _ in range(blocks):
                    times["fp32"].append(_time_per_call(fp32, feed, seconds))
                    times["int8"].append(_time_per_call(int8, feed, seconds))
                latency[f"batch{batch}"] = {k: round(median(v) * 1e6, 1) for k, v in times.items()}
            size32, size8 = built.fp32_path.stat().st_size, built.path.stat().st_size
            ops = _ops(built.path)
            rows.append({
                "model": name,
                "fp32_bytes": size32,
                "int8_bytes": size8,
                "size_ratio": round(size8 / size32, 3),
                "quantized": size8 != size32,
                "int8_ops": ops,
                "latency_us": latency,
                "speedup_batch1": round(latency["batch1"]["fp32"] / latency["batch1"]["int8"], 2),
                "speedup_batch64": round(
                    latency["batch64"]["fp32"] / latency["batch64"]["int8"], 2
                ),
                "quality": _quality(name, fp32, int8, built.X_eval, built.y_eval),
                "eval_rows": len(built.X_eval),
            })  # fmt: skip
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, previous)
    return {"section": "quantization", "mode": mode, "models": rows,
            "settings": {"block_s": seconds, "blocks": blocks, "cpus": SERVER_CPUS}}  # fmt: skip


def _ops(path: Any) -> list[str]:
    import onnx  # noqa: PLC0415

    return sorted({node.op_type for node in onnx.load(str(path)).graph.node})


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=2))
