"""Probation: after a swap, the new model must serve well before it is committed.

The watcher follows the requests the new version answers. Probation ends after
`probation_requests` answers or `probation_s` seconds, whichever comes first; then it is
judged, each rule with its own reason code (docs/protocol.md):

* `probation_failed`: more than `probation_max_error_rate` of the answers were server errors
  (5xx), the kind a model causes, unlike the 4xx a client's own bad input earns;
* `probation_nonfinite`: an answer held NaN or an infinity in a floating-point output;
* `probation_collapse`: the most common predicted class took more than
  `probation_max_class_share` of the rows, while it took at most that share of the previous
  version's recent rows here (classifiers with a label output);
* `probation_latency`: the p99 latency was more than `probation_max_latency_ratio` times the
  previous version's recent p99 here (at least `probation_latency_floor_ms`).

The two comparisons need `probation_min_requests` answers of both versions; with fewer (a
first version, a quiet device) they are not applied.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_agent.config.settings import UpdateSettings
from edge_agent.errors import (
    ProbationCollapseError,
    ProbationFailedError,
    ProbationLatencyError,
    ProbationNonFiniteError,
)
from edge_agent.metrics import AgentMetrics
from edge_agent.update.observations import (
    RECENT,
    RecentAnswers,
    VersionRecord,
    non_finite,
    predicted_labels,
    quantile,
    top_share,
)
from edge_protocol import ModelIO


@dataclass
class ProbationCount:
    """Answers of one model version during its probation (bounded: the last RECENT of each)."""

    answered: int = 0
    server_errors: int = 0
    non_finite: int = 0
    labelled: int = 0  # answers that gave labels
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=RECENT))
    labels: deque[Hashable] = field(default_factory=lambda: deque(maxlen=RECENT))


class ProbationWatcher:
    """Watches one model version until it passes or fails probation."""

    def __init__(
        self,
        metrics: AgentMetrics,
        model: str,
        version: int,
        settings: UpdateSettings,
        previous: VersionRecord | None = None,
    ) -> None:
        self._metrics = metrics
        self._model = model
        self._version = version
        self._settings = settings
        self._previous = previous
        self.count = ProbationCount()
        self._enough = asyncio.Event()

    async def watch(self) -> ProbationCount:
        """Wait out probation; raise a ProbationFailedError (one class per rule) on failure."""
        self._metrics.latency_listeners.append(self._on_request)
        self._metrics.output_listeners.append(self._on_outputs)
        started = time.monotonic()
        try:
            remaining = self._settings.probation_s
            await asyncio.wait_for(self._enough.wait(), timeout=remaining)
        except TimeoutError:
            pass  # the time limit ends probation as well as the request count does
        finally:
            self._metrics.latency_listeners.remove(self._on_request)
            self._metrics.output_listeners.remove(self._on_outputs)
        judge(self.count, self._previous, self._settings, time.monotonic() - started)
        return self.count

    def _on_request(self, model: str, version: str, status: int, seconds: float) -> None:
        if model != self._model or version != str(self._version):
            return
        self.count.answered += 1
        if status >= 500:
            self.count.server_errors += 1
        elif 200 <= status < 300:
            self.count.latencies.append(seconds)
        if self.count.answered >= self._settings.probation_requests:
            self._enough.set()

    def _on_outputs(
        self, model: str, version: int, outputs: Mapping[str, Any], io: ModelIO
    ) -> None:
        if model != self._model or version != self._version:
            return
        if non_finite(outputs, io):
            self.count.non_finite += 1
        labels = predicted_labels(outputs, io)
        if labels is not None:
            self.count.labelled += 1
            self.count.labels.extend(labels)


def previous_record(recent: RecentAnswers, model: str, version: int | None) -> VersionRecord | None:
    """A copy of the previous version's recent answers, taken before probation starts."""
    record = recent.get(model, version) if version is not None else None
    if record is None:
        return None
    return VersionRecord(
        deque(record.latencies, maxlen=RECENT), deque(record.labels, maxlen=RECENT),
        record.labelled_requests,
    )  # fmt: skip


def judge(
    count: ProbationCount,
    previous: VersionRecord | None,
    settings: UpdateSettings,
    elapsed_s: float,
) -> None:
    """Apply every rule, in order; raise the first one's error."""
    answered, errors = count.answered, count.server_errors
    if answered and errors / answered > settings.probation_max_error_rate:
        raise ProbationFailedError(
            f"{errors} of {answered} requests failed in {elapsed_s:.0f} s of probation "
            f"(limit {settings.probation_max_error_rate:.0%})"
        )
    if count.non_finite:
        raise ProbationNonFiniteError(
            f"{count.non_finite} of {answered} answers held NaN or infinite values"
        )
    if previous is not None:
        _judge_collapse(count, previous, settings)
        _judge_latency(count, previous, settings)


def _judge_collapse(
    count: ProbationCount, previous: VersionRecord, settings: UpdateSettings
) -> None:
    limit, enough = settings.probation_max_class_share, settings.probation_enough
    if limit >= 1 or count.labelled < enough or previous.labelled_requests < enough:
        return
    share, before = top_share(count.labels), previous.top_share()
    if share is None or before is None or share <= limit or before > limit:
        return
    raise ProbationCollapseError(
        f"{share:.0%} of the rows predicted during probation got the same class "
        f"(limit {limit:.0%}); the previous version gave its most common class to "
        f"{before:.0%} of its recent rows here"
    )


def _judge_latency(
    count: ProbationCount, previous: VersionRecord, settings: UpdateSettings
) -> None:
    ratio, enough = settings.probation_max_latency_ratio, settings.probation_enough
    if ratio <= 0 or len(count.latencies) < enough or len(previous.latencies) < enough:
        return
    p99, before = quantile(count.latencies, 0.99), previous.p99()
    if p99 is None or before is None:
        return
    baseline = max(before, settings.probation_latency_floor_ms / 1000)
    if p99 <= ratio * baseline:
        return
    raise ProbationLatencyError(
        f"p99 latency {p99 * 1000:.1f} ms during probation is {p99 / baseline:.1f} times the "
        f"previous version's {before * 1000:.1f} ms here (limit {ratio}x, "
        f"floor {settings.probation_latency_floor_ms} ms)"
    )
