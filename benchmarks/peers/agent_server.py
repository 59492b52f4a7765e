"""The edge agent's own endpoint: ModelRepository + InferenceServer with the default settings.

Everything the agent does per request is on: body limits, media checks, validation against
the io schema, non-finite checks, dynamic batching (max_batch_size 64, max_queue_delay_ms 1),
Prometheus metrics. Only the MQTT side is absent (it does no work while no update arrives).

`--inline` (diagnostics only) passes an executor that runs `session.run` on the calling thread,
through the public `executor=` argument of InferenceServer: it measures what the hand-off to
the inference thread costs.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from concurrent.futures import Executor, Future
from pathlib import Path
from typing import Any

from edge_agent.runtime import ModelRepository, RuntimeOptions, load_model
from edge_agent.server import InferenceServer, ServerConfig, serve_until_signalled


class InlineExecutor(Executor):
    """Runs every call at once on the caller's thread (the event loop's)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Call `fn` now; return a finished future."""
        future: Future[Any] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the awaiting request
            future.set_exception(e)
        return future


async def main(model_path: str, name: str, port: int, *, inline: bool = False) -> None:
    """Load, warm up, serve until SIGTERM."""
    options = RuntimeOptions(intra_op_threads=1, inter_op_threads=1)
    repository = ModelRepository()
    model = load_model(Path(model_path), name=name, version=1, options=options)
    model.warm_up()
    repository.swap(name, model)
    config = ServerConfig(host="127.0.0.1", port=port, runtime=options)
    executor = InlineExecutor() if inline else None
    await serve_until_signalled(InferenceServer(repository, config, executor=executor))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), inline="--inline" in sys.argv))
