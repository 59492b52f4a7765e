"""The edge agent's own endpoint: ModelRepository + InferenceServer with the default settings.

Everything the agent does per request is on: body limits, media checks, validation against
the io schema, non-finite checks, dynamic batching (max_batch_size 64, max_queue_delay_ms 1),
Prometheus metrics, on uvloop when installed, as `edge-agent run`. What is absent: the MQTT
connection, telemetry and its feature summaries, probation (the diagnostic row of the
benchmark: what the rest of a running agent adds).
"""

from __future__ import annotations

import sys
from pathlib import Path

from edge_agent import eventloop
from edge_agent.runtime import ModelRepository, RuntimeOptions, load_model
from edge_agent.server import InferenceServer, ServerConfig, serve_until_signalled


async def main(model_path: str, name: str, port: int) -> None:
    """Load, warm up, serve until SIGTERM."""
    options = RuntimeOptions(intra_op_threads=1, inter_op_threads=1)
    repository = ModelRepository()
    model = load_model(Path(model_path), name=name, version=1, options=options)
    model.warm_up()
    repository.swap(name, model)
    config = ServerConfig(host="127.0.0.1", port=port, runtime=options)
    await serve_until_signalled(InferenceServer(repository, config))


if __name__ == "__main__":
    eventloop.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
