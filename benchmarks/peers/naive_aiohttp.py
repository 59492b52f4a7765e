"""(a) The handler a user writes by hand.

aiohttp, `await request.json()`, `np.asarray`, `session.run`, `web.json_response`.
"""

from __future__ import annotations

import sys

import numpy as np
from aiohttp import web

from benchmarks.peers.ortsession import DATATYPES, session


def make_app(model_path: str) -> web.Application:
    """One POST route in the OIP v2 shape, no validation beyond what numpy does."""
    sess = session(model_path)
    input_name = sess.get_inputs()[0].name
    output_names = [output.name for output in sess.get_outputs()]

    async def infer(request: web.Request) -> web.Response:
        body = await request.json()
        tensor = body["inputs"][0]
        x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        results = sess.run(output_names, {input_name: x})
        outputs = [
            {"name": n, "datatype": DATATYPES[r.dtype], "shape": list(r.shape),
             "data": r.ravel().tolist()}
            for n, r in zip(output_names, results, strict=True)
        ]  # fmt: skip
        return web.json_response({"model_name": request.match_info["model"], "outputs": outputs})

    async def ready(request: web.Request) -> web.Response:
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/v2/models/{model}/infer", infer)
    app.router.add_get("/v2/health/ready", ready)
    return app


if __name__ == "__main__":
    web.run_app(make_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]),
                access_log=None, print=None)  # fmt: skip
