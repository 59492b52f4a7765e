"""(b) The same handler on FastAPI + uvicorn (uvloop and httptools, as `uvicorn[standard]`)."""

from __future__ import annotations

import os
import sys

import numpy as np
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from benchmarks.peers.ortsession import DATATYPES, session

app = FastAPI()
sess = session(os.environ["BENCH_MODEL"])
input_name = sess.get_inputs()[0].name
output_names = [output.name for output in sess.get_outputs()]


@app.post("/v2/models/{model}/infer")
async def infer(model: str, request: Request) -> JSONResponse:
    """Parse, run on the event loop, answer: exactly what the aiohttp handler does."""
    body = await request.json()
    tensor = body["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    results = sess.run(output_names, {input_name: x})
    outputs = [
        {"name": n, "datatype": DATATYPES[r.dtype], "shape": list(r.shape),
         "data": r.ravel().tolist()}
        for n, r in zip(output_names, results, strict=True)
    ]  # fmt: skip
    return JSONResponse({"model_name": model, "outputs": outputs})


@app.get("/v2/health/ready")
async def ready() -> Response:
    """Readiness for the benchmark's start-up poll."""
    return Response(status_code=200)


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=False,
                log_level="warning")  # fmt: skip
