"""What each step of the agent's request path costs, in-process, on one pinned CPU.

Each step of `edge_agent.server` / `edge_agent.runtime` is timed on its own with the small
int8 model and the serving benchmark's one-row body, next to what the naive handler does for
the same step. Microseconds per call, medians of 5 blocks. This explains the serving results;
it is not a target.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from edge_agent import eventloop
from edge_agent.metrics import AgentMetrics
from edge_agent.runtime import Batcher, BatchPolicy, ModelRepository, RuntimeOptions, load_model
from edge_agent.runtime.costs import measure_handoff
from edge_agent.server.oip import (
    InferResponse,
    OutputTensor,
    decode_infer_request,
    encode_infer_response,
)
from edge_agent.server.validation import InputLimits, select_outputs, validate_inputs

from benchmarks.common import SERVER_CPUS, median
from benchmarks.models import model


def _per_call(fn: Callable[[], Any], calls: int, blocks: int) -> float:
    fn()
    results = []
    for _ in range(blocks):
        began = time.perf_counter()
        for _ in range(calls):
            fn()
        results.append((time.perf_counter() - began) / calls)
    return round(median(results) * 1e6, 1)


async def _submit_cost(batcher: Batcher, loaded: Any, inputs: Any, *, parallel: int) -> float:
    async def one() -> None:
        await batcher.submit(loaded, inputs, 1)

    for _ in range(50):
        await asyncio.gather(*(one() for _ in range(parallel)))
    results = []
    for _ in range(5):
        rounds = max(1, 600 // parallel)
        began = time.perf_counter()
        for _ in range(rounds):
            await asyncio.gather(*(one() for _ in range(parallel)))
        results.append((time.perf_counter() - began) / (rounds * parallel))
    return round(median(results) * 1e6, 1)


async def _batcher_costs(loaded: Any, inputs: Any) -> dict[str, float]:
    out: dict[str, float] = {}
    policy = BatchPolicy(max_queue_delay_s=0.001)
    pool = ThreadPoolExecutor(1)
    handoff = await measure_handoff(pool)
    out["hand-off to the inference thread and back, measured as the server does"] = round(
        handoff / 1000, 1
    )
    for label, measured in (("as shipped: on the loop where measured cheaper", handoff),
                            ("always through the thread", None)):  # fmt: skip
        batcher = Batcher("small", policy, pool, handoff_ns=measured)
        batcher.start()
        for parallel in (1, 32):
            key = f"Batcher.submit, {label}, {parallel} at once"
            out[key] = await _submit_cost(batcher, loaded, inputs, parallel=parallel)
        await batcher.close()
    loop = asyncio.get_running_loop()

    async def hand_off() -> None:
        await loop.run_in_executor(pool, loaded.run, inputs)

    began = time.perf_counter()
    for _ in range(2000):
        await hand_off()
    out["loop.run_in_executor(LoadedModel.run) alone"] = round(
        (time.perf_counter() - began) / 2000 * 1e6, 1
    )
    pool.shutdown()
    return out


def run(mode: str) -> dict[str, Any]:
    """Time every step; return the results document."""
    calls, blocks = (1000, 3) if mode == "quick" else (3000, 5)
    previous = os.sched_getaffinity(0)
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, {int(c) for c in SERVER_CPUS.split(",")})
    try:
        small = model("small")
        row = [round(float(v), 6) for v in small.X_eval[0]]
        body = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 32],
                                       "data": row}]}).encode()  # fmt: skip
        options = RuntimeOptions()
        loaded = load_model(small.path, name="small", version=1, options=options)
        loaded.warm_up()
        limits = InputLimits(1024, allow_non_finite=False)
        request = decode_infer_request(body, None)
        inputs, _ = validate_inputs(request.inputs, loaded, limits)
        outputs = loaded.run(inputs)
        chosen = select_outputs(request, loaded.io, "small")
        response = InferResponse(
            "small", "1", tuple(OutputTensor(n, outputs[n], b) for n, b in chosen), None
        )
        session = loaded._session
        names = [spec.name for spec in loaded.io.outputs]
        metrics = AgentMetrics()
        repository = ModelRepository()
        repository.swap("small", loaded)
        observe_batch = metrics.batch_observer("small")

        def lease() -> None:
            with repository.lease("small"):
                pass

        def naive_parse() -> Any:
            tensor = json.loads(body)["inputs"][0]
            return np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])

        def naive_encode() -> bytes:
            return json.dumps({"model_name": "small", "outputs": [
                {"name": n, "datatype": "FP32", "shape": list(o.shape), "data": o.ravel().tolist()}
                for n, o in outputs.items()]}).encode()  # fmt: skip

        steps = {
            "decode_infer_request (edge_agent/server/oip.py)": lambda: decode_infer_request(
                body, None
            ),
            "naive: json.loads + np.asarray": naive_parse,
            "validate_inputs (edge_agent/server/validation.py)": lambda: validate_inputs(
                request.inputs, loaded, limits
            ),
            "select_outputs": lambda: select_outputs(request, loaded.io, "small"),
            "ModelRepository.lease": lease,
            "LoadedModel.run": lambda: loaded.run(inputs),
            "naive: session.run": lambda: session.run(names, inputs),
            "encode_infer_response (edge_agent/server/oip.py)": lambda: encode_infer_response(
                response
            ),
            "naive: json.dumps of the outputs": naive_encode,
            "AgentMetrics.observe_request": lambda: metrics.observe_request(
                model="small", version="1", status=200, endpoint="infer", seconds=0.001
            ),
            "AgentMetrics.batch_observer(...)(rows)": lambda: observe_batch(1),
        }
        costs = {name: _per_call(fn, calls, blocks) for name, fn in steps.items()}
        costs.update(eventloop.run(_batcher_costs(loaded, inputs)))
    finally:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(0, previous)
    return {"section": "agent_costs", "mode": mode, "cpus": SERVER_CPUS, "us_per_call": costs}


if __name__ == "__main__":
    import sys

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=2))
