"""A request for an idle model runs from its own task, on the loop when the model is cheap.

What must not change with it: concurrent requests still merge, one bad request still fails
alone with the same error, a run still holds its model version until it really ends (swap and
drain), and only batches that the measurements say are cheaper than the hand-off skip the
executor. The executor here is gated: work handed to it waits until the gate opens, so a
request that completes with the gate shut provably ran on the loop.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import ClientSession

from edge_agent.errors import InvalidRequestError
from edge_agent.runtime import Batcher, BatchPolicy, LoadedModel, ModelRepository, load_model
from edge_agent.runtime.costs import SAMPLES, RunCost, fit, time_runs
from tests.agent.conftest import Gate, ServerFactory, eventually
from tests.agent.test_batching import idx

ALWAYS_CHEAPER = 1e12  # a hand-off of 1000 s: every measured model is cheaper
INLINE_UP_TO_3 = RunCost(fixed_ns=1000, per_element_ns=1000, measured_elements=1,
                         grows_linearly=True)  # fmt: skip


@pytest.fixture
def warm(gather_model: Path) -> LoadedModel:
    """The gather model, warmed up: its run cost is measured."""
    model = load_model(gather_model, name="gather", version=1)
    model.warm_up()
    return model


def batcher(gate: Gate, runs: list[int], handoff_ns: float | None = ALWAYS_CHEAPER) -> Batcher:
    """A started batcher on the gated executor that records the rows of every run."""
    b = Batcher("gather", BatchPolicy(max_batch_size=8), gate.executor, runs.append,
                handoff_ns=handoff_ns)  # fmt: skip
    b.start()
    return b


async def test_an_idle_cheap_model_answers_on_the_loop(warm: LoadedModel, gate: Gate) -> None:
    runs: list[int] = []
    b = batcher(gate, runs)

    result = await b.submit(warm, idx(3), 1)  # the gate is shut: the executor ran nothing

    assert result.outputs["value"].tolist() == [4.5]
    assert result.model is warm
    assert runs == [1]
    assert warm.in_flight == 0
    await b.close()


async def test_concurrent_requests_on_the_loop_still_merge(warm: LoadedModel, gate: Gate) -> None:
    runs: list[int] = []
    b = batcher(gate, runs)

    results = await asyncio.gather(*(b.submit(warm, idx(k), 1) for k in range(8)))

    assert runs == [8]  # the first let the loop go once; the seven others joined its batch
    assert [r.outputs["value"].tolist() for r in results] == [[1.5 * k] for k in range(8)]
    assert all(r.batch_size == 8 for r in results)
    await b.close()


async def test_a_bad_request_fails_alone_with_the_same_error_on_the_loop(
    warm: LoadedModel, gather_model: Path, gate: Gate
) -> None:
    runs: list[int] = []
    b = batcher(gate, runs)

    good, bad, other = await asyncio.gather(
        b.submit(warm, idx(2), 1), b.submit(warm, idx(99), 1), b.submit(warm, idx(4), 1),
        return_exceptions=True,
    )  # fmt: skip

    assert not isinstance(good, BaseException)
    assert not isinstance(other, BaseException)
    assert good.outputs["value"].tolist() == [3.0]
    assert other.outputs["value"].tolist() == [6.0]
    assert isinstance(bad, InvalidRequestError)
    assert runs == [3, 1, 1, 1]  # the merged run failed, then one by one
    await b.close()
    # The same request on the executor fails with the same words.
    cold = load_model(gather_model, name="gather", version=1)  # not measured: executor only
    gate.open()
    threaded = batcher(gate, [], handoff_ns=None)
    with pytest.raises(InvalidRequestError) as caught:
        await threaded.submit(cold, idx(99), 1)
    assert str(caught.value) == str(bad)
    await threaded.close()


async def test_batches_larger_than_the_measurements_allow_go_to_the_executor(
    warm: LoadedModel, gate: Gate
) -> None:
    warm.run_cost = INLINE_UP_TO_3  # runs of up to 3 elements cost no more than the hand-off
    runs: list[int] = []
    b = batcher(gate, runs, handoff_ns=4000)

    small = await b.submit(warm, idx(1, 2), 2)  # on the loop, with the gate shut
    large = asyncio.create_task(b.submit(warm, idx(1, 2, 3, 4, 5), 5))
    await eventually(lambda: warm.in_flight == 1, "the large run waits in the executor")
    assert not large.done()
    gate.open()

    assert small.outputs["value"].tolist() == [1.5, 3.0]
    assert (await large).outputs["value"].tolist() == [1.5, 3.0, 4.5, 6.0, 7.5]
    assert runs == [2, 5]
    await b.close()


async def test_requests_queued_behind_a_batch_in_the_executor_run_on_the_loop_when_they_fit(
    warm: LoadedModel, gate: Gate
) -> None:
    warm.run_cost = INLINE_UP_TO_3
    runs: list[int] = []
    policy = BatchPolicy(max_batch_size=8, max_concurrent_batches=2)
    b = Batcher("gather", policy, gate.executor, runs.append, handoff_ns=4000)
    b.start()
    large = asyncio.create_task(b.submit(warm, idx(1, 2, 3, 4, 5), 5))
    await eventually(lambda: warm.in_flight == 1, "the large run waits in the executor")

    # They queue (a batch is running) and are dispatched as one batch of two elements: with the
    # gate shut they can only be answered on the loop.
    queued = await asyncio.wait_for(
        asyncio.gather(b.submit(warm, idx(1), 1), b.submit(warm, idx(2), 1)), timeout=5
    )

    assert [r.outputs["value"].tolist() for r in queued] == [[1.5], [3.0]]
    assert all(r.batch_size == 2 for r in queued)
    assert not large.done()
    gate.open()
    assert (await large).outputs["value"].tolist() == [1.5, 3.0, 4.5, 6.0, 7.5]
    assert runs == [5, 2]
    await b.close()


async def test_a_request_that_goes_away_leaves_the_model_held_until_its_run_ends(
    gather_model: Path, gate: Gate
) -> None:
    model = load_model(gather_model, name="gather", version=1)
    b = batcher(gate, [], handoff_ns=None)
    request = asyncio.create_task(b.submit(model, idx(1), 1))
    await eventually(lambda: model.in_flight == 1, "its run is in the executor")

    request.cancel()
    model.retire()  # a swap retires it now; its session goes only when the run is over
    await asyncio.sleep(0.05)
    assert model.in_flight == 1
    assert not model.released

    gate.open()
    await eventually(lambda: model.released, "released once the run ended")
    with pytest.raises(asyncio.CancelledError):
        await request
    await b.close()


async def test_a_swap_during_a_run_answers_each_request_from_its_own_version(
    gather_model: Path, warm: LoadedModel, gate: Gate
) -> None:
    old = load_model(gather_model, name="gather", version=7)  # executor only
    runs: list[int] = []
    b = batcher(gate, runs)
    first = asyncio.create_task(b.submit(old, idx(1), 1))
    await eventually(lambda: old.in_flight == 1, "the old version runs in the executor")
    old.retire()  # swapped out while its run is in flight
    after = asyncio.create_task(b.submit(warm, idx(2), 1))  # the new version, queued behind it
    await eventually(lambda: b.depth == 1, "queued while the model is busy")

    gate.open()
    results = await asyncio.gather(first, after)

    assert [r.model.version for r in results] == [7, 1]
    assert runs == [1, 1]  # never merged across versions
    assert old.released
    await b.close()


def test_the_inline_limit_follows_the_measured_costs() -> None:
    # 10 µs for 32 elements, 17 µs for 256: 9 µs fixed and 31.25 ns per element.
    cost = fit((32, 10_000.0), (256, 17_000.0))
    assert cost.inline_elements(60_000) == 1632  # (60 - 9) µs / 31.25 ns
    assert cost.inline_elements(9_999) == 0  # even one row costs more than the hand-off
    fixed_shape = fit((32, 10_000.0), None)  # not batchable: only inputs as small as measured
    assert fixed_shape.inline_elements(1e9) == 32
    assert fixed_shape.inline_elements(5_000) == 0


def test_a_slow_model_is_timed_briefly_and_not_at_many_rows(
    warm: LoadedModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its warm-up delays the swap: samples stop at their budget, and a model too slow ever to
    run on the loop is not run at PROBE_ROWS rows at all."""
    rows: list[int] = []
    run = warm.run

    def slow(inputs: dict[str, Any]) -> dict[str, Any]:
        rows.append(len(next(iter(inputs.values()))))
        time.sleep(0.008)  # 8 ms a run: far more than any hand-off
        return run(inputs)

    assert warm.batchable, "a model that could be measured at PROBE_ROWS rows"
    monkeypatch.setattr(warm, "run", slow)
    warm.warm_up()
    assert rows == [1, 1, 1, 1], "one run to set up, then samples until 20 ms were spent"
    assert warm.run_cost is not None
    assert warm.run_cost.inline_elements(1e6) == 0
    calls: list[None] = []
    time_runs(lambda: calls.append(None))
    assert len(calls) == SAMPLES, "a cheap run gets every sample"


async def test_the_server_measures_its_hand_off_and_serves_concurrent_requests(
    start_server: ServerFactory, http: ClientSession, gather_model: Path
) -> None:
    repository = ModelRepository()
    model = load_model(gather_model, name="gather", version=1)
    model.warm_up()
    repository.swap("gather", model)
    server = await start_server(repository)

    assert server.dataplane.handoff_ns is not None
    assert server.dataplane.handoff_ns > 0
    assert model.run_cost is not None

    async def ask(k: int) -> Any:
        body = {"inputs": [{"name": "idx", "datatype": "INT64", "shape": [1], "data": [k]}]}
        async with http.post(f"{server.url}/v2/models/gather/infer", json=body) as reply:
            assert reply.status == 200, await reply.text()
            return await reply.json()

    answers = await asyncio.gather(*(ask(k % 10) for k in range(40)))
    assert [a["outputs"][0]["data"] for a in answers] == [[1.5 * (k % 10)] for k in range(40)]
    np.testing.assert_array_equal(model.run({"idx": np.array([9])})["value"], [13.5])
