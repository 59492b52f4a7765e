"""A tiny Prometheus client: counters, gauges and histograms with labels, and the text format.

Renders the text exposition format 0.0.4 for both services: the agent keeps its metrics in the
classes here; the registry reads most of its values at scrape time and writes them out with
`family_lines`. Each metric guards its samples with a lock, so the event loop and executor
threads may update the same metric.
"""

from __future__ import annotations

import bisect
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import ClassVar, TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_METRIC_NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
LabelKey = tuple[str, ...]
M = TypeVar("M", bound="Metric")


def format_value(value: float) -> str:
    """Format a sample value the way Prometheus parses it."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def escape_label_value(value: str) -> str:
    """Escape backslash, double quote and newline in a label value."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def escape_help(text: str) -> str:
    """Escape backslash and newline in HELP text."""
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def family_lines(
    name: str, documentation: str, kind: str, samples: Iterable[tuple[Mapping[str, str], float]]
) -> list[str]:
    """The HELP and TYPE lines of one metric family followed by its samples, labels escaped."""
    lines = [f"# HELP {name} {escape_help(documentation)}", f"# TYPE {name} {kind}"]
    for labels, value in samples:
        text = _label_text(tuple(labels), tuple(labels.values()))
        lines.append(f"{name}{text} {format_value(value)}")
    return lines


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + pairs + "}"


class Metric:
    """Common part of every metric: name, help, label names and a lock."""

    kind: ClassVar[str] = "untyped"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        if not _METRIC_NAME.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for label in labelnames:
            if not _LABEL_NAME.match(label) or label.startswith("__") or label == "le":
                raise ValueError(f"invalid label name {label!r} for metric {name}")
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> LabelKey:
        # On every request: as many labels as names, each name present, is the same check as
        # comparing the two as sets, without building them.
        try:
            if len(labels) == len(self.labelnames):
                return tuple([str(labels[name]) for name in self.labelnames])
        except KeyError:
            pass
        raise ValueError(f"{self.name} takes labels {self.labelnames}, got {sorted(labels)}")

    def render(self) -> list[str]:
        """Return the HELP and TYPE lines followed by the sample lines."""
        return [
            f"# HELP {self.name} {escape_help(self.documentation)}",
            f"# TYPE {self.name} {self.kind}",
            *self._samples(),
        ]

    def _samples(self) -> list[str]:
        raise NotImplementedError


class Counter(Metric):
    """A value that only goes up."""

    kind = "counter"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, labelnames)
        self._values: dict[LabelKey, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add `amount` (not negative) to the labelled series."""
        if amount < 0:
            raise ValueError(f"{self.name}: a counter cannot go down")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        """The current value of the labelled series (0 if never incremented)."""
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def _samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_label_text(self.labelnames, k)} {format_value(v)}" for k, v in items]


class Gauge(Metric):
    """A value that goes up and down."""

    kind = "gauge"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, documentation, labelnames)
        self._values: dict[LabelKey, float] = {}

    def set(self, value: float, **labels: str) -> None:
        """Set the labelled series to `value`."""
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def value(self, **labels: str) -> float:
        """The current value of the labelled series (0 if never set)."""
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def series(self) -> list[LabelKey]:
        """The label values of every series set so far."""
        with self._lock:
            return list(self._values)

    def _samples(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return [f"{self.name}{_label_text(self.labelnames, k)} {format_value(v)}" for k, v in items]


class Histogram(Metric):
    """Counts of observations in cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str] = (),
        *,
        buckets: Sequence[float],
    ) -> None:
        super().__init__(name, documentation, labelnames)
        bounds = [float(b) for b in buckets if not math.isinf(b)]
        if not bounds or bounds != sorted(set(bounds)):
            raise ValueError(f"{self.name}: buckets must be increasing and distinct")
        self.buckets = (*bounds, math.inf)
        self._series: dict[LabelKey, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        """Record one observation in the labelled series."""
        key = self._key(labels)
        index = bisect.bisect_left(self.buckets, value)
        with self._lock:
            counts, total = self._series.setdefault(key, ([0] * len(self.buckets), [0.0]))
            counts[index] += 1
            total[0] += value

    def counts(self, **labels: str) -> dict[float, int]:
        """Cumulative count per upper bound of the labelled series."""
        with self._lock:
            counts, _ = self._series.get(self._key(labels), ([0] * len(self.buckets), [0.0]))
            counts = list(counts)
        running = [sum(counts[: i + 1]) for i in range(len(counts))]
        return dict(zip(self.buckets, running, strict=True))

    def _samples(self) -> list[str]:
        with self._lock:
            items = sorted((k, (list(c), t[0])) for k, (c, t) in self._series.items())
        lines: list[str] = []
        for key, (counts, total) in items:
            running = 0
            for bound, count in zip(self.buckets, counts, strict=True):
                running += count
                names, values = (*self.labelnames, "le"), (*key, format_value(bound))
                lines.append(f"{self.name}_bucket{_label_text(names, values)} {running}")
            labels = _label_text(self.labelnames, key)
            lines.append(f"{self.name}_sum{labels} {format_value(total)}")
            lines.append(f"{self.name}_count{labels} {running}")
        return lines


class Registry:
    """The metrics of one process, rendered together."""

    def __init__(self) -> None:
        self._metrics: dict[str, Metric] = {}
        self._hooks: list[Callable[[], None]] = []

    def register(self, metric: M) -> M:
        """Add `metric`; its name must be new."""
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is already registered")
        self._metrics[metric.name] = metric
        return metric

    def add_collect_hook(self, hook: Callable[[], None]) -> None:
        """Run `hook` before each render, to refresh gauges read from live objects."""
        self._hooks.append(hook)

    def metrics(self) -> Iterable[Metric]:
        """The registered metrics, in registration order."""
        return self._metrics.values()

    def render(self) -> str:
        """The text exposition of every metric."""
        for hook in list(self._hooks):
            hook()
        lines = [line for metric in self._metrics.values() for line in metric.render()]
        return "\n".join(lines) + "\n"
