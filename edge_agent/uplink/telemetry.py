"""Periodic telemetry: what the agent served over the last interval, and what it costs.

The collector listens to `AgentMetrics` (requests with their latency, batches, validated input
tensors) and keeps one interval's worth of numbers; `snapshot` turns them into the body of a
telemetry message and starts the next interval. `Telemetry.run` is the agent's reporting task:
it sends the spool to the broker and adds a report every `interval_s`. docs/telemetry.md
describes every field.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent import __version__
from edge_agent.config.settings import TelemetrySettings
from edge_agent.metrics import AgentMetrics
from edge_agent.runtime.model import LoadedModel
from edge_agent.uplink.drift import DriftCounts, fit_bins
from edge_agent.uplink.features import FeatureSummary
from edge_agent.uplink.reporting import Reporter
from edge_agent.uplink.version_details import DetailSource, add_details
from edge_protocol import ModelIO
from edge_protocol.messages import MAX_MESSAGE_BYTES

log = logging.getLogger(__name__)

LATENCY_SAMPLES = 2048  # per model version and interval; beyond, a uniform reservoir sample
MAX_INPUTS = 16  # inputs summarized per model (the first ones by name)
STATUS_CLASSES = ("2xx", "4xx", "5xx")
NO_VERSION = "none"  # requests that named no served model


@dataclass
class RequestStats:
    """Requests answered by one model version over one interval."""

    statuses: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUS_CLASSES, 0))
    rejected_503: int = 0
    count: int = 0
    latencies_s: list[float] = field(default_factory=list)

    def add(self, status: int, seconds: float, rng: random.Random) -> None:
        """Count one request."""
        self.count += 1
        status_class = f"{min(max(status // 100, 1), 5)}xx"
        self.statuses[status_class] = self.statuses.get(status_class, 0) + 1
        if status == 503:
            self.rejected_503 += 1
        if len(self.latencies_s) < LATENCY_SAMPLES:
            self.latencies_s.append(seconds)
        else:  # reservoir sampling keeps every request equally likely to be in the sample
            slot = rng.randrange(self.count)
            if slot < LATENCY_SAMPLES:
                self.latencies_s[slot] = seconds

    def to_dict(self) -> dict[str, Any]:
        """The per-version entry of a report."""
        body: dict[str, Any] = {"requests": self.count, **self.statuses}
        body["rejected_503"] = self.rejected_503
        if self.latencies_s:
            samples = np.asarray(self.latencies_s) * 1000.0
            p50, p95, p99 = np.percentile(samples, [50, 95, 99])
            body["latency_ms"] = {
                "p50": _round(p50), "p95": _round(p95), "p99": _round(p99),
                "mean": _round(samples.mean()), "max": _round(samples.max()),
                "samples": len(samples),
            }  # fmt: skip
        return body


@dataclass
class BatchStats:
    """Rows per session.run of one model over one interval."""

    count: int = 0
    rows: int = 0
    max: int = 0

    def add(self, rows: int) -> None:
        """Count one session.run."""
        self.count += 1
        self.rows += rows
        self.max = max(self.max, rows)

    def to_dict(self) -> dict[str, Any]:
        """The `batches` entry of a model."""
        return {"count": self.count, "rows": self.rows, "mean": _round(self.rows / self.count),
                "max": self.max}  # fmt: skip


@dataclass
class Interval:
    """Everything counted since the last report."""

    requests: dict[tuple[str, str], RequestStats] = field(default_factory=dict)
    batches: dict[str, BatchStats] = field(default_factory=dict)
    features: dict[str, dict[str, FeatureSummary]] = field(default_factory=dict)


class TelemetryCollector:
    """Listens to the agent's metrics and turns each interval into a report body."""

    def __init__(self, metrics: AgentMetrics, state_dir: Path) -> None:
        self._state_dir = state_dir
        self._lock = threading.Lock()
        self._interval = Interval()
        self._rng = random.Random()  # noqa: S311 - sampling latencies, not secrets
        self._started = time.monotonic()
        self._last_wall = self._started
        self._last_cpu = _cpu_seconds()
        self.version_details: list[DetailSource] = []  # more fields per version (experiments)
        metrics.latency_listeners.append(self.on_request)
        metrics.batch_listeners.append(self.on_batch)
        metrics.input_listeners.append(self.on_inputs)
        metrics.output_listeners.append(self.on_outputs)
        self._drift = DriftCounts()  # bins and predictions per version (uplink/drift.py)

    def on_request(self, model: str, version: str, status: int, seconds: float) -> None:
        """AgentMetrics listener: one answered inference request."""
        with self._lock:
            stats = self._interval.requests.setdefault((model, version), RequestStats())
            stats.add(status, seconds, self._rng)

    def on_batch(self, model: str, rows: int) -> None:
        """AgentMetrics listener: one session.run."""
        with self._lock:
            self._interval.batches.setdefault(model, BatchStats()).add(rows)

    def on_inputs(self, model: LoadedModel, inputs: Mapping[str, Any]) -> None:
        """AgentMetrics listener: the validated input tensors of one request."""
        try:
            self._summarize(model.name, inputs)
            with self._lock:
                self._drift.add_inputs(model.name, model.version, model.profile, inputs)
        except Exception:  # a summary must never fail the request it summarizes
            log.exception("could not summarize the inputs of a %s request", model.name)

    def on_outputs(self, model: str, version: int, outputs: Mapping[str, Any], io: ModelIO) -> None:
        """AgentMetrics listener: the outputs of one answered request (predictions)."""
        try:
            with self._lock:
                self._drift.add_outputs(model, version, outputs, io)
        except Exception:  # counting must never fail the request it counts
            log.exception("could not count the predictions of a %s answer", model)

    def _summarize(self, model: str, inputs: Mapping[str, Any]) -> None:
        with self._lock:
            summaries = self._interval.features.setdefault(model, {})
            for name in sorted(inputs):
                summary = summaries.get(name)
                if summary is None:
                    if len(summaries) >= MAX_INPUTS or not FeatureSummary.accepts(inputs[name]):
                        continue
                    summary = summaries[name] = FeatureSummary()
                summary.add(inputs[name])

    def snapshot(self, spool: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The body of a report on the interval just ended; the next interval starts now."""
        with self._lock:
            interval, self._interval = self._interval, Interval()
            drift = self._drift.take()
        now, cpu = time.monotonic(), _cpu_seconds()
        elapsed, cpu_used = now - self._last_wall, cpu - self._last_cpu
        self._last_wall, self._last_cpu = now, cpu
        body: dict[str, Any] = {
            "agent_version": __version__,
            "interval_s": _round(elapsed),
            "uptime_s": _round(now - self._started),
            "requests": _totals(interval.requests.values()),
            "models": add_details(
                _models(interval, drift), self.version_details, RequestStats().to_dict
            ),
            "resources": self._resources(cpu, cpu_used, elapsed),
        }
        if spool is not None:
            body["spool"] = dict(spool)
        return _fit(fit_bins(body))

    def _resources(self, cpu: float, cpu_used: float, elapsed: float) -> dict[str, Any]:
        disk = os.statvfs(self._state_dir)
        return {
            "rss_bytes": rss_bytes(),
            "cpu_seconds": _round(cpu_used),
            "cpu_percent": _round(100.0 * cpu_used / elapsed) if elapsed > 0 else 0.0,
            "cpu_seconds_total": _round(cpu),
            "disk_free_bytes": disk.f_bavail * disk.f_frsize,
            "disk_total_bytes": disk.f_blocks * disk.f_frsize,
        }


class Telemetry:
    """The agent's reporting task: drains the spool and adds a report every interval."""

    def __init__(
        self, collector: TelemetryCollector, reporter: Reporter, settings: TelemetrySettings
    ) -> None:
        self.collector = collector
        self._reporter = reporter
        self._settings = settings
        self.reports = 0
        self.last_msg_seq: int | None = None

    async def run(self) -> None:
        """Send spooled messages whenever connected, and report every interval, until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._reporter.run(), name="spool-sender")
            tasks.create_task(self._every_interval(), name="telemetry")

    async def report(self) -> int:
        """Produce and spool one report now; return its msg_seq."""
        body = self.collector.snapshot(self._reporter.spool.stats())
        seq = await self._reporter.telemetry(body)
        self.reports += 1
        self.last_msg_seq = seq
        return seq

    def status(self) -> dict[str, Any]:
        """The telemetry part of `GET /v1/status`."""
        return {
            "telemetry": {
                "interval_s": self._settings.interval_s,
                "reports": self.reports,
                "last_msg_seq": self.last_msg_seq,
                "sent": self._reporter.sent,
                "acknowledged": self._reporter.acknowledged,
                "resent": self._reporter.resent,
                "spool": self._reporter.spool.stats(),
            }
        }

    async def _every_interval(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self._settings.interval_s
        due = loop.time() + interval
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            due = max(due + interval, loop.time())  # after a stall, resume without a burst
            try:
                await self.report()
            except Exception:
                log.exception("could not produce a telemetry report")


def _models(interval: Interval, drift: Mapping[tuple[str, int], dict[str, Any]]) -> dict[str, Any]:
    for model, number in drift:  # a version whose request ends in the next interval
        interval.requests.setdefault((model, str(number)), RequestStats())
    models: dict[str, dict[str, Any]] = {}
    for (model, version), stats in sorted(interval.requests.items()):
        entry = models.setdefault(model, {"versions": {}})
        fields = drift.get((model, int(version)), {}) if version.isdigit() else {}
        entry["versions"][version or NO_VERSION] = stats.to_dict() | fields
    for model, batches in sorted(interval.batches.items()):
        models.setdefault(model, {"versions": {}})["batches"] = batches.to_dict()
    for model, summaries in sorted(interval.features.items()):
        features = {name: s.to_dict() for name, s in sorted(summaries.items()) if s.rows}
        if features:
            models.setdefault(model, {"versions": {}})["features"] = features
    return models


def _totals(stats: Any) -> dict[str, int]:
    totals = {"total": 0, **dict.fromkeys(STATUS_CLASSES, 0), "rejected_503": 0}
    for entry in stats:
        totals["total"] += entry.count
        totals["rejected_503"] += entry.rejected_503
        for status_class, count in entry.statuses.items():
            totals[status_class] = totals.get(status_class, 0) + count
    return totals


def _fit(body: dict[str, Any]) -> dict[str, Any]:
    """Leave out the feature summaries when the report would come near the message cap."""
    if len(json.dumps(body, separators=(",", ":"))) <= MAX_MESSAGE_BYTES - 1024:
        return body
    for entry in body["models"].values():
        entry.pop("features", None)
    body["features_dropped"] = True
    log.warning("telemetry report too large for one message: feature summaries left out")
    return body


def rss_bytes() -> int | None:
    """Resident set size of this process (Linux /proc), or None elsewhere."""
    try:
        with open("/proc/self/statm", encoding="ascii") as statm:
            resident_pages = int(statm.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _round(value: float) -> float:
    return float(f"{float(value):.6g}")
