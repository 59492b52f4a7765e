"""The agent's Prometheus metrics, and the setters the server, runtime and updater call."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from edge_agent.runtime import LoadedModel, ModelRepository
from edge_common.prometheus import Counter, Gauge, Histogram, Registry
from edge_protocol import ModelIO

UNKNOWN_MODEL = "_unknown"  # label for requests naming no served model: bounds cardinality
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class AgentMetrics:
    """Every metric `GET /metrics` exposes, with one setter per event."""

    def __init__(self) -> None:
        self.registry = Registry()
        self._attached: set[int] = set()
        # Called with (model, version, status) for every answered request (probation watches).
        self.request_listeners: list[Callable[[str, str, int], None]] = []
        # Telemetry (edge_agent/uplink/telemetry.py) also hears the latency of each request, the
        # rows of each session.run and each request's validated input tensors, by model name.
        self.latency_listeners: list[Callable[[str, str, int, float], None]] = []
        self.batch_listeners: list[Callable[[str, int], None]] = []
        # (with the model version, whose release's drift profile telemetry bins the inputs in).
        self.input_listeners: list[Callable[[LoadedModel, Mapping[str, Any]], None]] = []
        # Probation and telemetry hear each answer's outputs: (model, version, outputs, io).
        self.output_listeners: list[Callable[[str, int, Mapping[str, Any], ModelIO], None]] = []
        r = self.registry
        self.requests = r.register(Counter(
            "edge_agent_requests_total",
            "Inference requests by model, the version that answered, and HTTP status.",
            ("model", "version", "status"),
        ))  # fmt: skip
        self.request_duration = r.register(Histogram(
            "edge_agent_request_duration_seconds",
            "Inference request latency, from routing to response, by model and endpoint.",
            ("model", "endpoint"),
            buckets=LATENCY_BUCKETS_S,
        ))  # fmt: skip
        self.queue_depth = r.register(Gauge(
            "edge_agent_queue_depth", "Requests waiting for a batch, by model.", ("model",)
        ))  # fmt: skip
        self.batch_size = r.register(Histogram(
            "edge_agent_batch_size",
            "Rows per session.run, by model: above 1 when requests were merged.",
            ("model",),
            buckets=BATCH_BUCKETS,
        ))  # fmt: skip
        self.model_loads = r.register(Counter(
            "edge_agent_model_loads_total",
            "Model versions put into service (first load or swap), by model.",
            ("model",),
        ))  # fmt: skip
        self.model_load_failures = r.register(Counter(
            "edge_agent_model_load_failures_total",
            "Model versions that failed to load, warm up or self-test, by model.",
            ("model",),
        ))  # fmt: skip
        self.model_swaps = r.register(Counter(
            "edge_agent_model_swaps_total",
            "Hot swaps of a serving model to another version, by model.",
            ("model",),
        ))  # fmt: skip
        self.update_state = r.register(Gauge(
            "edge_agent_update_state",
            "1 for the update phase each model is in, 0 for the phases it has left.",
            ("model", "phase"),
        ))  # fmt: skip
        self.serving_version = r.register(Gauge(
            "edge_agent_serving_version", "The version each model is serving.", ("model",)
        ))  # fmt: skip

    def observe_request(
        self, *, model: str, version: str, status: int, endpoint: str, seconds: float
    ) -> None:
        """Count one inference request and record its latency."""
        self.requests.inc(model=model, version=version, status=str(status))
        self.request_duration.observe(seconds, model=model, endpoint=endpoint)
        for listener in self.request_listeners:
            listener(model, version, status)
        for timed in self.latency_listeners:
            timed(model, version, status, seconds)

    def observe_inputs(self, model: LoadedModel, inputs: Mapping[str, Any]) -> None:
        """Hand one request's validated input tensors to the input listeners."""
        for listener in self.input_listeners:
            listener(model, inputs)

    def observe_outputs(
        self, model: str, version: int, outputs: Mapping[str, Any], io: ModelIO
    ) -> None:
        """Hand one answered request's outputs to the output listeners."""
        for listener in self.output_listeners:
            listener(model, version, outputs, io)

    def batch_observer(self, model: str) -> Callable[[int], None]:
        """A callback recording the rows of each session.run of `model`."""

        def observe(rows: int) -> None:
            self.batch_size.observe(rows, model=model)
            for listener in self.batch_listeners:
                listener(model, rows)

        return observe

    def set_queue_depth(self, model: str, depth: int) -> None:
        """Set the number of requests waiting for `model`."""
        self.queue_depth.set(depth, model=model)

    def record_load_failure(self, model: str) -> None:
        """Count a model version that could not be put into service (updater)."""
        self.model_load_failures.inc(model=model)

    def set_update_state(self, model: str, phase: str) -> None:
        """Mark `phase` as the current update phase of `model` (updater).

        The previous phase of the model drops to 0, so exactly one phase series per model is 1.
        """
        for series_model, series_phase in self.update_state.series():
            if series_model == model and series_phase != phase:
                self.update_state.set(0, model=model, phase=series_phase)
        self.update_state.set(1, model=model, phase=phase)

    def attach(self, repository: ModelRepository) -> None:
        """Follow `repository`: count what it already serves, then every later change."""
        if id(repository) in self._attached:
            return
        self._attached.add(id(repository))
        for model in repository.snapshot():
            self.on_repository_change(model.name, None, model)
        repository.add_listener(self.on_repository_change)

    def on_repository_change(
        self, name: str, old: LoadedModel | None, new: LoadedModel | None
    ) -> None:
        """ModelRepository listener: count loads and swaps, track the serving version."""
        if new is None:
            self.serving_version.set(0, model=name)
            return
        self.model_loads.inc(model=name)
        if old is not None:
            self.model_swaps.inc(model=name)
        self.serving_version.set(new.version, model=name)

    def render(self) -> str:
        """The Prometheus text exposition of every metric."""
        return self.registry.render()
