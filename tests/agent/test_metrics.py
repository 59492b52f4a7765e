"""The tiny Prometheus client: exposition format, escaping, histograms, thread safety."""

from __future__ import annotations

import math
import threading

import pytest

from edge_agent.metrics import AgentMetrics
from edge_common.prometheus import (
    Counter,
    Gauge,
    Histogram,
    Registry,
    escape_label_value,
    format_value,
)


def test_counter_and_gauge_exposition() -> None:
    registry = Registry()
    counter = registry.register(Counter("c_total", "Things\\counted\nhere.", ("kind",)))
    gauge = registry.register(Gauge("g", "A level."))
    counter.inc(kind='a"b\\c\nd')
    counter.inc(2.5, kind="plain")
    gauge.set(-3)

    text = registry.render()

    assert text.splitlines() == [
        "# HELP c_total Things\\\\counted\\nhere.",
        "# TYPE c_total counter",
        'c_total{kind="a\\"b\\\\c\\nd"} 1',
        'c_total{kind="plain"} 2.5',
        "# HELP g A level.",
        "# TYPE g gauge",
        "g -3",
    ]
    assert text.endswith("\n")


def test_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    histogram = Histogram("h", "Sizes.", ("m",), buckets=(1, 2, 4))
    for value in (1, 1, 3, 10):
        histogram.observe(value, m="x")

    lines = histogram.render()[2:]

    assert lines == [
        'h_bucket{m="x",le="1"} 2',
        'h_bucket{m="x",le="2"} 2',
        'h_bucket{m="x",le="4"} 3',
        'h_bucket{m="x",le="+Inf"} 4',
        'h_sum{m="x"} 15',
        'h_count{m="x"} 4',
    ]
    assert histogram.counts(m="x")[math.inf] == 4


def test_values_and_escaping() -> None:
    assert [format_value(v) for v in (1.0, 0.25, math.inf, -math.inf, math.nan, 1e20)] == [
        "1", "0.25", "+Inf", "-Inf", "NaN", "1e+20",
    ]  # fmt: skip
    assert escape_label_value('\\"\n') == '\\\\\\"\\n'


@pytest.mark.parametrize(
    "make",
    [
        lambda: Counter("bad name", "x"),
        lambda: Counter("ok", "x", ("le",)),
        lambda: Counter("ok", "x", ("__reserved",)),
        lambda: Histogram("ok", "x", buckets=(2, 1)),
    ],
)
def test_invalid_definitions_are_refused(make: object) -> None:
    with pytest.raises(ValueError, match=r"invalid|increasing"):
        make()  # type: ignore[operator]


def test_wrong_labels_and_negative_increments_are_refused() -> None:
    counter = Counter("c", "x", ("a",))
    with pytest.raises(ValueError, match="takes labels"):
        counter.inc(b="1")
    with pytest.raises(ValueError, match="cannot go down"):
        counter.inc(-1, a="1")
    registry = Registry()
    registry.register(counter)
    with pytest.raises(ValueError, match="already registered"):
        registry.register(Counter("c", "y"))


def test_updates_from_many_threads_are_not_lost() -> None:
    counter = Counter("c", "x", ("t",))
    histogram = Histogram("h", "x", buckets=(1,))

    def work() -> None:
        for _ in range(2000):
            counter.inc(t="same")
            histogram.observe(0.5)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert counter.value(t="same") == 8000
    assert histogram.counts()[1.0] == 8000


def test_update_state_keeps_one_phase_per_model() -> None:
    metrics = AgentMetrics()
    metrics.set_update_state("a", "downloading")
    metrics.set_update_state("b", "verifying")
    metrics.set_update_state("a", "probation")

    assert metrics.update_state.value(model="a", phase="downloading") == 0
    assert metrics.update_state.value(model="a", phase="probation") == 1
    assert metrics.update_state.value(model="b", phase="verifying") == 1


def test_load_failures_are_counted() -> None:
    metrics = AgentMetrics()
    metrics.record_load_failure("a")

    assert 'edge_agent_model_load_failures_total{model="a"} 1' in metrics.render()
