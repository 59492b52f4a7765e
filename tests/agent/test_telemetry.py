"""Telemetry: what a report says about real requests, and the spool across a broker outage.

Real onnxruntime models behind a real InferenceServer; a real mosquitto per test with a TCP
relay in front of it that the test takes down and up again, so the test's own subscriber keeps
its connection while the agent side loses it. Waits have deadlines; nothing asserts on timing.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession

from edge_agent.config.settings import MqttSettings, TelemetrySettings
from edge_agent.metrics import AgentMetrics
from edge_agent.mqtt import AgentMqtt, Backoff, Message, run_with_reconnect
from edge_agent.uplink.features import MAX_FEATURES, FeatureSummary
from edge_agent.uplink.reporting import Reporter
from edge_agent.uplink.spool import Spool
from edge_agent.uplink.telemetry import Telemetry, TelemetryCollector
from edge_protocol.messages import parse_device_message, telemetry_payload
from edge_protocol.topics import Topics
from tests.agent.conftest import Gate, ServerFactory, eventually, infer_body, post
from tests.support.broker import Broker, BrokerFactory
from tests.support.models import ModelSet
from tests.support.relay import TcpRelay

TOPICS = Topics()
DEVICE = "dev-tele"
Array = np.ndarray[Any, Any]


# --- feature summaries ---------------------------------------------------------------------


def expected_summary(rows: Array) -> dict[str, Any]:
    """What numpy says about the finite values of each column."""
    x = rows.reshape(rows.shape[0], -1)[:, :MAX_FEATURES].astype(np.float64)
    finite = np.where(np.isfinite(x), x, np.nan)
    return {
        "count": np.isfinite(x).sum(axis=0).tolist(),
        "mean": np.nanmean(finite, axis=0),
        "std": np.nanstd(finite, axis=0),
        "min": np.nanmin(finite, axis=0),
        "max": np.nanmax(finite, axis=0),
        "nan_count": np.isnan(x).sum(axis=0).tolist(),
        "inf_count": np.isinf(x).sum(axis=0).tolist(),
    }


def assert_summary_matches(summary: dict[str, Any], rows: Array) -> None:
    """The reported summary agrees with numpy on the same rows (to float32 precision)."""
    expected = expected_summary(rows)
    assert summary["rows"] == rows.shape[0]
    for key in ("count", "nan_count", "inf_count"):
        assert summary[key] == expected[key], key
    for key in ("mean", "std", "min", "max"):
        assert summary[key] == pytest.approx(expected[key].tolist(), rel=1e-5, abs=1e-6), key


def summarize(*requests: Array) -> dict[str, Any]:
    """Merge `requests` one by one, as the collector does."""
    summary = FeatureSummary()
    for request in requests:
        summary.add(request)
    return summary.to_dict()


RNG = np.random.default_rng(7)


@pytest.mark.parametrize(
    "requests",
    [
        pytest.param([RNG.normal(size=(5, 8)).astype(np.float32)], id="one-request"),
        pytest.param(
            [RNG.normal(3.0, 2.0, size=(n, 4)) for n in (1, 7, 2, 30)], id="merged-requests"
        ),
        pytest.param(
            [1e6 + RNG.normal(size=(50, 3)) for _ in range(4)], id="large-offset-stays-exact"
        ),
        pytest.param([RNG.integers(-5, 5, size=(9,))], id="int64-rank-1"),
        pytest.param([RNG.normal(size=(3, 10, 10))], id="flattened-and-capped-at-64"),
        pytest.param(
            [np.array([[1.0, np.nan, 2.0], [np.inf, 4.0, -np.inf], [3.0, np.nan, 6.0]])],
            id="nan-and-inf-counted-apart",
        ),
    ],
)
def test_feature_summaries_agree_with_numpy(requests: list[Array]) -> None:
    summary = summarize(*requests)
    rows = np.concatenate(requests)
    assert_summary_matches(summary, rows)
    assert summary["features"] == int(np.prod(rows.shape[1:]))
    assert summary["summarized"] == min(summary["features"], MAX_FEATURES)


def test_a_column_without_a_finite_value_reports_nulls() -> None:
    summary = summarize(np.array([[np.nan, 1.0], [np.nan, 2.0]]))
    assert summary["mean"][0] is None
    assert summary["min"][0] is None
    assert summary["nan_count"] == [2, 0]
    assert summary["mean"][1] == 1.5


def test_only_numeric_inputs_are_summarized() -> None:
    assert FeatureSummary.accepts(np.zeros(3, np.float16))
    assert FeatureSummary.accepts(np.zeros(3, np.uint8))
    assert not FeatureSummary.accepts(np.zeros(3, np.bool_))
    assert not FeatureSummary.accepts(np.array([b"text"], dtype=object))


# --- a report on real requests ---------------------------------------------------------------


def _queued(server: Any, model: str) -> int:
    status = server.dataplane.status()
    return next(m["queue_depth"] for m in status["models"] if m["name"] == model)


async def _infer(http: ClientSession, url: str, model: Any, rows: Array) -> int:
    body = infer_body(model, rows)
    return (await post(http, f"{url}/v2/models/{model.name}/infer", json=body)).status


async def test_a_report_counts_the_requests_and_summarizes_their_inputs(
    start_server: ServerFactory,
    http: ClientSession,
    onnx_models: ModelSet,
    gate: Gate,
    tmp_path: Path,
) -> None:
    clf, reg = onnx_models.classifier, onnx_models.regressor
    server = await start_server(executor=gate.executor, max_queue_size=2)
    collector = TelemetryCollector(server.metrics, tmp_path)
    x = clf.X_eval
    # Hold the executor so that the queue fills and one request is refused with a 503.
    first = asyncio.create_task(_infer(http, server.url, clf, x[0:1]))
    await eventually(lambda: server.dataplane.repository.get("classifier").in_flight == 2, "run")
    held = [asyncio.create_task(_infer(http, server.url, clf, x[a:b])) for a, b in ((1, 2), (2, 4))]
    await eventually(lambda: _queued(server, "classifier") == 2, "queue full")
    assert await _infer(http, server.url, clf, x[4:5]) == 503
    gate.open()
    assert await asyncio.gather(first, *held) == [200, 200, 200]
    for a, b in ((5, 8), (8, 9), (9, 14)):
        assert await _infer(http, server.url, clf, x[a:b]) == 200
    assert await _infer(http, server.url, clf, x[0:1, :3]) == 400  # wrong width: not validated
    missing = await post(http, f"{server.url}/v2/models/nope/infer", json=infer_body(clf, x[:1]))
    assert missing.status == 404
    predict = {"instances": reg.X_eval[:3].tolist()}
    assert (
        await post(http, f"{server.url}/v1/models/regressor:predict", json=predict)
    ).status == 200

    body = collector.snapshot()

    assert body["requests"] == {
        "total": 10, "2xx": 7, "4xx": 2, "5xx": 1, "rejected_503": 1,
    }  # fmt: skip
    models = body["models"]
    served = models["classifier"]["versions"]["1"]
    assert (served["2xx"], served["4xx"], served["rejected_503"]) == (6, 1, 1)
    assert models["_unknown"]["versions"]["none"]["4xx"] == 1  # the request naming no model
    latency = served["latency_ms"]
    assert 0 < latency["p50"] <= latency["p95"] <= latency["p99"] <= latency["max"]
    batches = models["classifier"]["batches"]
    assert batches["rows"] == 14 - 1  # every row answered; the refused request never ran
    assert 1 <= batches["max"] <= 5
    assert batches["mean"] == pytest.approx(batches["rows"] / batches["count"])
    # The refused request's input was validated before the queue refused it: it is in.
    assert_summary_matches(models["classifier"]["features"][clf.input_name], x[:14])
    assert_summary_matches(models["regressor"]["features"][reg.input_name], reg.X_eval[:3])
    resources = body["resources"]
    assert resources["rss_bytes"] > 0
    assert resources["disk_free_bytes"] > 0
    assert resources["cpu_seconds"] >= 0
    encoded = telemetry_payload(DEVICE, body)
    assert parse_device_message("telemetry", DEVICE, encoded)["requests"]["total"] == 10
    after = collector.snapshot()
    assert after["requests"]["total"] == 0, "each interval starts anew"
    assert after["models"] == {}


# --- the spool across a broker outage ----------------------------------------------------------


@dataclass
class Watcher:
    """Everything the broker delivers on the device's events and telemetry topics."""

    messages: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def seqs(self) -> list[int]:
        """msg_seq of every message, in arrival order."""
        return [body["msg_seq"] for _, body in self.messages]

    def telemetry(self) -> list[dict[str, Any]]:
        """The telemetry bodies, in arrival order."""
        return [body for kind, body in self.messages if kind == "telemetry"]

    def on_message(self, message: Message) -> None:
        """Record one message (validated as the registry would)."""
        kind = TOPICS.parse(message.topic).kind
        self.messages.append((kind, parse_device_message(kind, DEVICE, message.payload)))


@contextlib.asynccontextmanager
async def watching(broker: Broker) -> AsyncIterator[Watcher]:
    """Subscribe straight to the broker (not through the relay) and collect in the background."""
    watcher = Watcher()
    settings = MqttSettings(url=broker.url, username="")
    async with AgentMqtt(settings, client_id=f"watch-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe(TOPICS.events(DEVICE), TOPICS.telemetry(DEVICE))

        async def collect() -> None:
            async for message in client.messages():
                watcher.on_message(message)

        task = asyncio.create_task(collect())
        try:
            yield watcher
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


@dataclass
class Uplink:
    """The agent's reporting parts, in process: spool, reporter, telemetry, MQTT reconnect loop."""

    spool: Spool
    reporter: Reporter
    telemetry: Telemetry


@contextlib.asynccontextmanager
async def running_uplink(
    url: str, state_dir: Path, settings: TelemetrySettings
) -> AsyncIterator[Uplink]:
    """Run the reporting parts of an agent against the broker at `url` until the block ends."""
    spool = Spool(state_dir / "spool", settings.spool_max_bytes)
    reporter = Reporter(DEVICE, TOPICS, lambda: ({}, {}), spool)
    telemetry = Telemetry(TelemetryCollector(AgentMetrics(), state_dir), reporter, settings)
    mqtt = MqttSettings(url=url, username="", reconnect_min_s=0.05, reconnect_max_s=0.2)

    async def ignore(_message: Message) -> None:
        return None

    tasks = [
        asyncio.create_task(run_with_reconnect(
            mqtt, client_id=DEVICE, will=reporter.offline_will, on_connect=reporter.connected,
            on_message=ignore, backoff=Backoff(0.05, 0.2),
            on_disconnect=lambda _error: reporter.disconnected(),
        )),
        asyncio.create_task(telemetry.run()),
    ]  # fmt: skip
    try:
        yield Uplink(spool, reporter, telemetry)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Wait for `predicate` with a deadline that only a broken agent reaches."""
    await eventually(predicate, what, timeout_s=30)


async def go_down_with_nothing_in_flight(relay: TcpRelay, uplink: Uplink) -> int:
    """Cut the network when every message so far is acknowledged; return the next msg_seq.

    Nothing is in flight at that instant, so no message can reach the broker twice: a
    duplicate would then be a bug, not the at-least-once delivery QoS 1 allows.
    """
    await until(lambda: uplink.spool.stats()["pending"] == 0, "everything sent")
    relay.down()  # in the same loop step as the check: no publish can start in between
    next_seq: int = uplink.spool.stats()["next_msg_seq"]
    return next_seq


async def test_an_outage_spools_everything_and_the_flush_keeps_order_without_duplicates(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    broker = broker_factory.plain()
    settings = TelemetrySettings(interval_s=0.2)
    async with (
        TcpRelay(broker) as relay,
        watching(broker) as watcher,
        running_uplink(relay.url, tmp_path, settings) as uplink,
    ):
        await until(lambda: len(watcher.telemetry()) >= 2, "telemetry while online")
        first_offline = await go_down_with_nothing_in_flight(relay, uplink)
        reports = uplink.telemetry.reports
        await uplink.reporter.event("received", model="m", version=2, seq=5)
        await until(lambda: uplink.telemetry.reports >= reports + 5, "telemetry while offline")
        await uplink.reporter.event("failed", model="m", version=2, reason="timeout", detail="t")
        await until(lambda: uplink.spool.stats()["pending"] >= 7, "spooled")
        assert max(watcher.seqs()) < first_offline, "nothing got through while down"
        relay.up = True
        last_offline = uplink.spool.stats()["next_msg_seq"] - 1
        await until(lambda: max(watcher.seqs()) >= last_offline, "the spool flushed")

    seqs = watcher.seqs()
    assert len(seqs) == len(set(seqs)), "no message arrived twice"
    assert seqs == list(range(seqs[0], seqs[-1] + 1)), "every message, in order"
    events = [body for kind, body in watcher.messages if kind == "events"]
    assert [(e["event"], e.get("reason")) for e in events] == [
        ("received", None),
        ("failed", "timeout"),
    ]
    assert all(e["msg_seq"] >= first_offline for e in events)
    spool = watcher.telemetry()[-1]["spool"]
    assert (spool["dropped_telemetry"], spool["dropped_events"], spool["corrupt"]) == (0, 0, 0)


async def test_over_the_cap_the_oldest_telemetry_goes_and_the_count_is_exact(
    broker_factory: BrokerFactory, tmp_path: Path
) -> None:
    broker = broker_factory.plain()
    settings = TelemetrySettings(interval_s=0.2, spool_max_bytes=3000)  # a handful of reports
    async with (
        TcpRelay(broker) as relay,
        watching(broker) as watcher,
        running_uplink(relay.url, tmp_path, settings) as uplink,
    ):
        await until(lambda: len(watcher.telemetry()) >= 1, "telemetry while online")
        first_offline = await go_down_with_nothing_in_flight(relay, uplink)
        await uplink.reporter.event("received", model="m", version=3)
        await until(lambda: uplink.spool.stats()["dropped_telemetry"] >= 4, "over the cap")
        await uplink.reporter.event("activated", model="m", version=3)
        relay.up = True
        await until(lambda: uplink.spool.stats()["pending"] == 0, "the spool flushed")
        # Drops happen only when a message is spooled; none can happen with the spool empty,
        # so every report from now on counts all of them.
        flushed_at = uplink.spool.stats()["next_msg_seq"]
        await until(lambda: max(watcher.seqs()) >= flushed_at, "a report after the flush")

    seqs = watcher.seqs()
    assert len(seqs) == len(set(seqs)), "no message arrived twice"
    assert seqs == sorted(seqs), "in order"
    latest = watcher.telemetry()[-1]
    missing = sorted(set(range(seqs[0], latest["msg_seq"])) - set(seqs))
    assert latest["spool"]["dropped_telemetry"] == len(missing) >= 4
    assert latest["spool"]["dropped_events"] == 0
    events = [body["event"] for kind, body in watcher.messages if kind == "events"]
    assert events == ["received", "activated"], "events are kept over telemetry"
    offline_telemetry = [t["msg_seq"] for t in watcher.telemetry() if t["msg_seq"] >= first_offline]
    assert max(missing) < min(offline_telemetry), "the oldest telemetry went first"
