"""The edge agent's own endpoint: ModelRepository + InferenceServer with the default settings.

Everything the agent does per request is on: body limits, media checks, validation against
the io schema, non-finite checks, dynamic batching (max_batch_size 64, max_queue_delay_ms 1),
Prometheus metrics, on uvloop when installed, as `edge-agent run`. What is absent: the MQTT
connection, telemetry and its feature summaries, probation (the diagnostic row of the
benchmark: what the rest of a running agent adds). With `--shadow` the same model file,
loaded a second time as version 2, shadows every request (the experiments' shadow row: what a
shadow costs the answers).
"""

from __future__ import annotations

import sys
from pathlib import Path

from edge_agent import eventloop
from edge_agent.experiments import Experiments
from edge_agent.runtime import ModelRepository, RuntimeOptions, load_model
from edge_agent.server import InferenceServer, ServerConfig, serve_until_signalled
from edge_protocol import ExperimentSpec, Pin


async def main(model_path: str, name: str, port: int, shadow: bool = False) -> None:
    """Load, warm up, serve until SIGTERM."""
    options = RuntimeOptions(intra_op_threads=1, inter_op_threads=1)
    repository = ModelRepository()
    model = load_model(Path(model_path), name=name, version=1, options=options)
    model.warm_up()
    repository.swap(name, model)
    experiments = Experiments()
    if shadow:
        candidate = load_model(Path(model_path), name=name, version=2, options=options)
        candidate.warm_up()
        pin = Pin(2, candidate.sha256, 1)  # the pin only names it here: nothing is fetched
        await experiments.start(name, 1, ExperimentSpec(1, "bench", "shadow", pin), candidate)
    config = ServerConfig(host="127.0.0.1", port=port, runtime=options)
    await serve_until_signalled(InferenceServer(repository, config, experiments=experiments))


if __name__ == "__main__":
    eventloop.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), "--shadow" in sys.argv[4:]))
