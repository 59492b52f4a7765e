"""(d) The ceiling: aiohttp reads the body and returns a constant answer, without inference."""

from __future__ import annotations

import json
import sys

from aiohttp import web

ANSWER = json.dumps({
    "model_name": "small", "model_version": "1",
    "outputs": [{"name": "label", "datatype": "INT64", "shape": [1], "data": [1]},
                {"name": "probabilities", "datatype": "FP32", "shape": [1, 3],
                 "data": [0.1, 0.7, 0.2]}],
}).encode()  # fmt: skip


async def infer(request: web.Request) -> web.Response:
    """Read the whole body, then answer the same bytes every time."""
    await request.read()
    return web.Response(body=ANSWER, content_type="application/json")


async def ready(request: web.Request) -> web.Response:
    """Readiness for the benchmark's start-up poll."""
    return web.Response(status=200)


if __name__ == "__main__":
    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_get("/v2/health/ready", ready)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
