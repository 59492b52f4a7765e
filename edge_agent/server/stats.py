"""Triton's statistics extension: cumulative counts and durations per served model version.

The DataPlane records every inference request (HTTP and gRPC alike) and every session.run.
Only the version being served is kept per model name, so memory is bounded by the models
served (and `MAX_BATCH_SIZES` batch sizes each). docs/inference-api.md, "Statistics", says
what each duration measures and which ones are always zero.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from edge_agent.runtime import LoadedModel, ModelRepository

MAX_BATCH_SIZES = 256  # distinct batch sizes listed per model; executions beyond still count
DURATIONS = (
    "success", "fail", "queue", "compute_input", "compute_infer", "compute_output",
    "cache_hit", "cache_miss",
)  # fmt: skip
BATCH_DURATIONS = ("compute_input", "compute_infer", "compute_output")


@dataclass
class Duration:
    """A count and the nanoseconds those occurrences took together."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        """Count one occurrence of `ns` nanoseconds."""
        self.count += 1
        self.ns += max(0, ns)

    def to_dict(self) -> dict[str, int]:
        """`{"count": ..., "ns": ...}` as Triton writes it."""
        return {"count": self.count, "ns": self.ns}


@dataclass(frozen=True)
class RequestTiming:
    """Where one successful request spent its time inside the agent, in nanoseconds."""

    total_ns: int
    input_ns: int  # validating the decoded inputs against the model
    queue_ns: int  # waiting for a batch to start
    infer_ns: int  # the session.run that answered it


@dataclass
class ModelStats:
    """The cumulative statistics of one model version."""

    version: str
    last_inference_ms: int = 0
    inference_count: int = 0  # rows answered (a request of 8 rows counts 8, as in Triton)
    execution_count: int = 0  # session.run calls
    durations: dict[str, Duration] = field(
        default_factory=lambda: {name: Duration() for name in DURATIONS}
    )
    batches: dict[int, Duration] = field(default_factory=dict)  # compute_infer per batch size

    def to_dict(self, name: str) -> dict[str, Any]:
        """The model's entry of `model_stats`."""
        return {
            "name": name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {k: d.to_dict() for k, d in self.durations.items()},
            "batch_stats": [_batch_entry(size, run) for size, run in sorted(self.batches.items())],
        }


def _batch_entry(size: int, run: Duration) -> dict[str, Any]:
    entry: dict[str, Any] = {"batch_size": size}
    for key in BATCH_DURATIONS:  # only the session.run itself is measured per batch size
        entry[key] = (run if key == "compute_infer" else Duration()).to_dict()
    return entry


class InferenceStats:
    """Statistics of the models `repository` serves, as `GET /v2/models/{m}/stats` reports them."""

    def __init__(self, repository: ModelRepository) -> None:
        self._repository = repository
        self._models: dict[str, ModelStats] = {}

    def record_success(self, model: LoadedModel, rows: int, timing: RequestTiming) -> None:
        """Count one answered request of `rows` rows."""
        stats = self._entry(model.name, str(model.version))
        if stats is None:
            return
        stats.inference_count += rows
        stats.last_inference_ms = time.time_ns() // 1_000_000
        durations = stats.durations
        durations["success"].add(timing.total_ns)
        durations["compute_input"].add(timing.input_ns)
        durations["queue"].add(timing.queue_ns)
        durations["compute_infer"].add(timing.infer_ns)
        durations["compute_output"].add(0)

    def record_failure(self, name: str, ns: int) -> None:
        """Count one request for the served model `name` that failed after `ns` nanoseconds."""
        if name not in self._repository:
            return  # an unknown name must not grow the table
        stats = self._entry(name, str(self._repository.get(name).version))
        if stats is not None:
            stats.durations["fail"].add(ns)
            stats.last_inference_ms = time.time_ns() // 1_000_000

    def record_execution(self, model: LoadedModel, rows: int, ns: int) -> None:
        """Count one session.run of `rows` rows that took `ns` nanoseconds."""
        stats = self._entry(model.name, str(model.version))
        if stats is None:
            return
        stats.execution_count += 1
        run = stats.batches.get(rows)
        if run is None and len(stats.batches) < MAX_BATCH_SIZES:
            run = stats.batches[rows] = Duration()
        if run is not None:
            run.add(ns)

    def report(self, models: list[LoadedModel]) -> dict[str, Any]:
        """`{"model_stats": [...]}` for `models` (zeros for those not asked anything yet)."""
        entries = []
        for model in models:
            version = str(model.version)
            stats = self._models.get(model.name)
            if stats is None or stats.version != version:
                stats = ModelStats(version)
            entries.append(stats.to_dict(model.name))
        return {"model_stats": entries}

    def _entry(self, name: str, version: str) -> ModelStats | None:
        """The entry to count `version` of `name` in; None for a version no longer served."""
        if name not in self._repository or str(self._repository.get(name).version) != version:
            return None  # finished on the old version after a swap, or the model is gone
        stats = self._models.get(name)
        if stats is None or stats.version != version:
            for gone in [n for n in self._models if n not in self._repository]:
                del self._models[gone]
            stats = self._models[name] = ModelStats(version)
        return stats
