"""What each model version answered lately on this device: latencies and predicted classes.

Probation compares a new version with the one it replaced, so the answers of the serving
version are recorded all the time, not only during probation. Memory is bounded: the last
`RECENT` successful latencies and predicted labels per version, for the last
`VERSIONS_PER_MODEL` versions of at most `MAX_MODELS` models.
"""

from __future__ import annotations

from collections import Counter, OrderedDict, deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.metrics import UNKNOWN_MODEL, AgentMetrics
from edge_protocol import ModelIO

RECENT = 512  # per version: latencies of requests, and labels of rows
VERSIONS_PER_MODEL = 3  # the serving one, the one on probation, and one more
MAX_MODELS = 64
_LABEL_TYPES = frozenset({"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32",
                          "UINT64", "BYTES"})  # fmt: skip
_FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})


@dataclass
class VersionRecord:
    """The recent answers of one model version."""

    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))
    labels: deque[Hashable] = field(default_factory=lambda: deque(maxlen=RECENT))
    labelled_requests: int = 0  # requests whose outputs gave labels (a classifier's)

    def p99(self) -> float | None:
        """The 99th percentile of the recent latencies, in seconds."""
        return quantile(self.latencies, 0.99)

    def top_share(self) -> float | None:
        """The share of the most common label among the recent rows."""
        return top_share(self.labels)


class RecentAnswers:
    """Listens to the metrics and keeps a bounded `VersionRecord` per model version."""

    def __init__(self, metrics: AgentMetrics) -> None:
        self._records: OrderedDict[tuple[str, int], VersionRecord] = OrderedDict()
        metrics.latency_listeners.append(self.on_request)
        metrics.output_listeners.append(self.on_outputs)

    def get(self, model: str, version: int) -> VersionRecord | None:
        """The record of `version` of `model`, if it answered lately."""
        return self._records.get((model, version))

    def on_request(self, model: str, version: str, status: int, seconds: float) -> None:
        """AgentMetrics listener: the latency of one answered request (successes only)."""
        if model == UNKNOWN_MODEL or not version.isdigit() or not 200 <= status < 300:
            return
        self._record(model, int(version)).latencies.append(seconds)

    def on_outputs(self, model: str, version: int, outputs: Mapping[str, Any], io: ModelIO) -> None:
        """AgentMetrics listener: the labels one answer predicted, if it is a classifier's."""
        labels = predicted_labels(outputs, io)
        if labels is None:
            return
        record = self._record(model, version)
        record.labels.extend(labels)
        record.labelled_requests += 1

    def _record(self, model: str, version: int) -> VersionRecord:
        key = (model, version)
        record = self._records.get(key)
        if record is None:
            record = self._records[key] = VersionRecord()
            self._evict(model)
        return record

    def _evict(self, model: str) -> None:
        # The oldest entries go first: of this model past its version count, then any model.
        own = [key for key in self._records if key[0] == model]
        for key in own[: max(0, len(own) - VERSIONS_PER_MODEL)]:
            del self._records[key]
        models = list(dict.fromkeys(name for name, _version in self._records))
        for name in models[: max(0, len(models) - MAX_MODELS)]:
            for key in [k for k in self._records if k[0] == name]:
                del self._records[key]


def predicted_labels(outputs: Mapping[str, Any], io: ModelIO) -> list[Hashable] | None:
    """One label per row from the integer or string label output; None for other models.

    Only a declared label output counts: a float matrix may as well be several regression
    targets as class scores.
    """
    name = label_output(outputs, io)
    if name is None:
        return None
    values: list[Hashable] = np.asarray(outputs[name]).reshape(-1).tolist()
    return values


def label_output(outputs: Mapping[str, Any], io: ModelIO) -> str | None:
    """The name of the first integer or string output present in `outputs`, if any."""
    for spec in io.outputs:
        if spec.datatype in _LABEL_TYPES and spec.name in outputs:
            return spec.name
    return None


def non_finite(outputs: Mapping[str, Any], io: ModelIO) -> bool:
    """Whether any floating-point output holds NaN or an infinity."""
    for spec in io.outputs:
        value = outputs.get(spec.name)
        floats = spec.datatype in _FLOAT_TYPES and value is not None
        if floats and not np.isfinite(np.asarray(value)).all():
            return True
    return False


def quantile(values: deque[float] | list[float], q: float) -> float | None:
    """The `q` quantile (nearest rank, upper) of `values`, or None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(np.ceil(q * len(ordered))) - 1)]


def top_share(labels: deque[Hashable] | list[Hashable]) -> float | None:
    """The share of the most common label, or None without labels."""
    if not labels:
        return None
    return Counter(labels).most_common(1)[0][1] / len(labels)
