"""The inference service behind the HTTP handlers (MLServer's dataplane pattern).

Handlers parse and serialize; everything in between happens here: lease the serving model,
validate against its io schema, queue on its batcher, shape the result. Owns one Batcher per
model name; `close` stops them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from typing import Any

from edge_agent import __version__
from edge_agent.errors import AgentError, ModelNotFoundError, ShuttingDownError
from edge_agent.experiments import Experiments
from edge_agent.experiments.feedback import parse_feedback
from edge_agent.metrics import AgentMetrics
from edge_agent.runtime import Batcher, LoadedModel, ModelRepository
from edge_agent.runtime.batching import BatchResult
from edge_agent.runtime.costs import measure_handoff
from edge_agent.runtime.model import Array
from edge_agent.server.answering import Answering
from edge_agent.server.model_config import model_config
from edge_agent.server.oip import InferRequest, InferResponse, OutputTensor
from edge_agent.server.settings import ServerConfig
from edge_agent.server.simple import instances_to_tensors, predictions
from edge_agent.server.stats import InferenceStats, RequestTiming
from edge_agent.server.validation import InputLimits, select_outputs, validate_inputs

log = logging.getLogger(__name__)

SERVER_NAME = "edge-agent"
PLATFORM = "onnx_onnxv1"
EXTENSIONS = ("binary_tensor_data",)

# Returns a fragment merged into GET /v1/status (the updater adds "update", trust adds "trust").
StatusProvider = Callable[[], Mapping[str, Any]]


class DataPlane:
    """Health, metadata, inference and status, independent of the transport."""

    def __init__(
        self,
        repository: ModelRepository,
        config: ServerConfig,
        metrics: AgentMetrics,
        executor: Executor,
        experiments: Experiments | None = None,
    ) -> None:
        self.repository = repository
        self.experiments = experiments or Experiments()
        self.metrics = metrics
        self.status_providers: list[StatusProvider] = []
        self.draining = False
        self._config = config
        self._policy = config.batch_policy()
        self._limits = InputLimits(config.max_request_batch, config.allow_non_finite)
        self._executor = executor
        self._batchers: dict[str, Batcher] = {}
        self._closed = False
        self.handoff_ns: float | None = None  # measured by `calibrate` when the server starts
        self.stats = InferenceStats(repository)
        # Inference requests being answered: each counts from its decoding (infer_exchange)
        # or its lease to its answer. A shadow runs only once none has been for QUIET_S.
        self.answering = Answering()
        self.experiments.watch_serving(self.answering)
        metrics.registry.add_collect_hook(self._refresh_gauges)

    def server_metadata(self) -> dict[str, Any]:
        """The OIP server metadata object."""
        return {"name": SERVER_NAME, "version": __version__, "extensions": list(EXTENSIONS)}

    def is_ready(self) -> bool:
        """Ready: serving at least one model and not draining."""
        return not self.draining and bool(self.repository.names())

    def model(self, name: str, version: str | None = None) -> LoadedModel:
        """The serving model `name` (and `version`, when given), or ModelNotFoundError."""
        model = self.repository.get(name)
        if version is not None and version != str(model.version):
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r} loaded; "
                f"version {model.version} is being served"
            )
        return model

    def model_metadata(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The OIP model metadata object."""
        model = self.model(name, version)
        return {
            "name": model.name,
            "versions": [str(model.version)],
            "platform": PLATFORM,
            "inputs": [spec.to_dict() for spec in model.io.inputs],
            "outputs": [spec.to_dict() for spec in model.io.outputs],
        }

    def model_ready(self, name: str, version: str | None = None) -> bool:
        """Whether the model (version) can take requests now."""
        return not self.draining and not self.model(name, version).released

    def model_config(self, name: str, version: str | None = None) -> dict[str, Any]:
        """Triton's model configuration of the served model (version)."""
        return model_config(self.model(name, version), self._config)

    def statistics(self, name: str | None, version: str | None = None) -> dict[str, Any]:
        """Triton's `{"model_stats": [...]}`: of one model (version), or of every model served."""
        if name is None:
            return self.stats.report(self.repository.snapshot())
        return self.stats.report([self.model(name, version)])

    async def calibrate(self) -> None:
        """Measure the round trip through the inference executor, which decides which models
        run on the event loop (edge_agent/runtime/costs.py)."""
        self.handoff_ns = await measure_handoff(self._executor)
        log.info("inference hand-off to the executor: %.1f µs", self.handoff_ns / 1000)
        for batcher in self._batchers.values():
            batcher.handoff_ns = self.handoff_ns

    async def infer(self, name: str, version: str | None, request: InferRequest) -> InferResponse:
        """Run one OIP inference request through the model's batcher (on the variant of an
        experiment that the request is routed to)."""
        started = time.perf_counter_ns()
        self.answering.begin()
        try:
            model = self._hold(name, version, request.routing_key)
            try:
                inputs, rows = validate_inputs(request.inputs, model, self._limits)
                chosen = select_outputs(request, model.io, name)
                result = await self._submit(model, inputs, rows, started)
            finally:
                model.release()
        except AgentError:
            self.stats.record_failure(name, time.perf_counter_ns() - started)
            raise
        finally:
            self.answering.end()
        self.metrics.observe_outputs(name, result.model.version, result.outputs, result.model.io)
        request_id = self.experiments.answered(result.model, request.id, inputs, result.outputs)
        outputs = tuple(OutputTensor(n, result.outputs[n], binary) for n, binary in chosen)
        return InferResponse(name, str(result.model.version), outputs, request_id)

    async def predict(
        self, name: str, version: str | None, body: Any, routing_key: str | None = None
    ) -> dict[str, Any]:
        """Run a `{"instances": [...]}` request and return `{"predictions": [...]}`."""
        started = time.perf_counter_ns()
        self.answering.begin()
        try:
            model = self._hold(name, version, routing_key)
            try:
                tensors = instances_to_tensors(body, model.io)
                inputs, rows = validate_inputs(tensors, model, self._limits)
                result = await self._submit(model, inputs, rows, started)
            finally:
                model.release()
        except AgentError:  # a domain error counts as a failure of model `name`
            self.stats.record_failure(name, time.perf_counter_ns() - started)
            raise
        finally:
            self.answering.end()
        self.metrics.observe_outputs(name, result.model.version, result.outputs, result.model.io)
        request_id = self.experiments.answered(result.model, None, inputs, result.outputs)
        answer: dict[str, Any] = {
            "model_name": name,
            "model_version": str(result.model.version),
            "predictions": predictions(result.outputs, result.model.io),
        }
        if request_id is not None:
            answer["id"] = request_id
        return answer

    def feedback(self, name: str, body: Any) -> dict[str, Any]:
        """Score the application's ground truth against the answers of an experiment."""
        items = parse_feedback(body, self.experiments.settings.max_feedback_items)
        results = self.experiments.feedback(name, items)
        matched = sum(r["status"] == "matched" for r in results)
        return {"model_name": name, "matched": matched, "results": results}

    def _hold(self, name: str, version: str | None, key: str | None) -> LoadedModel:
        """The model that answers, acquired (the caller releases it): an experiment's
        treatment, or the served model."""
        treatment = self.experiments.treatment(name, version, key)
        return treatment if treatment is not None else self.repository.hold(name, version)

    async def _submit(
        self, model: LoadedModel, inputs: dict[str, Array], rows: int, started: int
    ) -> BatchResult:
        """Queue validated inputs on the model's batcher; count the request in the stats."""
        self.metrics.observe_inputs(model, inputs)
        queued = time.perf_counter_ns()  # since `started`: the lease and validation
        result = await self._batcher(model.name).submit(model, inputs, rows)
        done = time.perf_counter_ns()
        timing = RequestTiming(
            total_ns=done - started,
            input_ns=queued - started,
            queue_ns=done - queued - result.run_ns,
            infer_ns=result.run_ns,
        )
        self.stats.record_success(result.model, rows, timing)
        return result

    def status(self) -> dict[str, Any]:
        """GET /v1/status: the agent, its models, and what the status providers add."""
        status: dict[str, Any] = {}
        for provider in list(self.status_providers):
            try:
                status.update(provider())
            except Exception:
                # Status is for diagnosing problems: one broken provider must not hide the rest.
                log.exception("status provider %r failed", provider)
                status.setdefault("status_errors", []).append(repr(provider))
        status.update(
            agent_version=__version__,
            ready=self.is_ready(),
            draining=self.draining,
            models=[self._model_status(m) for m in self.repository.snapshot()],
            **self.experiments.status(),
        )
        return status

    def _model_status(self, model: LoadedModel) -> dict[str, Any]:
        batcher = self._batchers.get(model.name)
        return {
            "name": model.name,
            "version": model.version,
            "sha256": model.sha256,
            "loaded_at": model.loaded_at.isoformat(),
            "in_flight": model.in_flight,
            "queue_depth": 0 if batcher is None else batcher.depth,
            "batchable": model.batchable,
            "providers": list(model.providers),
        }

    def _batcher(self, name: str) -> Batcher:
        if self._closed:
            raise ShuttingDownError("the server is shutting down")
        batcher = self._batchers.get(name)
        if batcher is None:
            observe = self.metrics.batch_observer(name)
            batcher = Batcher(
                name,
                self._policy,
                self._executor,
                on_batch=observe,
                on_run=self.stats.record_execution,
                handoff_ns=self.handoff_ns,
            )
            batcher.start()
            self._batchers[name] = batcher
        return batcher

    def _refresh_gauges(self) -> None:
        for name in self.repository.names():
            batcher = self._batchers.get(name)
            self.metrics.set_queue_depth(name, 0 if batcher is None else batcher.depth)

    async def close(self) -> None:
        """Stop every batcher (after the server has finished its in-flight requests)."""
        self._closed = True
        batchers, self._batchers = list(self._batchers.values()), {}
        for batcher in batchers:
            await batcher.close()
        await self.experiments.close()
