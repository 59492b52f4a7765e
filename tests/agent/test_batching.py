"""The Batcher on its own: merge and split, limits, failure isolation, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

from edge_agent.errors import InvalidRequestError, OverloadedError, ShuttingDownError
from edge_agent.runtime import Batcher, BatchPolicy, LoadedModel, load_model
from edge_agent.runtime.batching import merge_inputs, split_outputs
from tests.agent.conftest import OPSET, Gate, eventually


def idx(*values: int) -> dict[str, np.ndarray[Any, Any]]:
    """Inputs of the gather model."""
    return {"idx": np.array(values, dtype=np.int64)}


@pytest.fixture
def gather(gather_model: Path) -> LoadedModel:
    """value[N] = 1.5 * idx[N], batchable, fails for an index outside 0..9."""
    return load_model(gather_model, name="gather", version=1)


@pytest.fixture
async def batcher(gate: Gate) -> AsyncIterator[tuple[Batcher, list[int]]]:
    """A batcher on the gated executor, and the rows of every session.run it made."""
    runs: list[int] = []
    b = Batcher(
        "gather", BatchPolicy(max_batch_size=8, max_queue_size=6), gate.executor, runs.append
    )
    b.start()
    yield b, runs
    gate.open()
    await b.close()


async def test_queued_requests_merge_into_one_run_and_split_back(
    batcher: tuple[Batcher, list[int]], gather: LoadedModel, gate: Gate
) -> None:
    b, runs = batcher
    first = asyncio.create_task(b.submit(gather, idx(0), 1))
    await eventually(lambda: gather.in_flight == 1, "first batch held by the gate")
    rest = [asyncio.create_task(b.submit(gather, idx(*range(k, k + 2)), 2)) for k in range(1, 7, 2)]
    await eventually(lambda: b.depth == 3, "queued")

    gate.open()
    results = [await first, *await asyncio.gather(*rest)]

    assert runs == [1, 6]
    np.testing.assert_array_equal(results[0].outputs["value"], [0.0])
    for k, result in zip(range(1, 7, 2), results[1:], strict=True):
        np.testing.assert_array_equal(result.outputs["value"], [1.5 * k, 1.5 * (k + 1)])
        assert result.batch_size == 6
        assert result.model is gather


async def test_batches_respect_max_batch_size(
    batcher: tuple[Batcher, list[int]], gather: LoadedModel, gate: Gate
) -> None:
    b, runs = batcher
    first = asyncio.create_task(b.submit(gather, idx(0), 1))
    await eventually(lambda: gather.in_flight == 1, "held")
    rest = [asyncio.create_task(b.submit(gather, idx(1, 2, 3), 3)) for _ in range(4)]
    await eventually(lambda: b.depth == 4, "queued")

    gate.open()
    await asyncio.gather(first, *rest)

    assert runs == [1, 6, 6]


async def test_one_bad_request_does_not_fail_its_batch_neighbours(
    batcher: tuple[Batcher, list[int]], gather: LoadedModel, gate: Gate
) -> None:
    b, runs = batcher
    first = asyncio.create_task(b.submit(gather, idx(0), 1))
    await eventually(lambda: gather.in_flight == 1, "held")
    good = asyncio.create_task(b.submit(gather, idx(2), 1))
    bad = asyncio.create_task(b.submit(gather, idx(99), 1))
    other = asyncio.create_task(b.submit(gather, idx(4), 1))
    await eventually(lambda: b.depth == 3, "queued")

    gate.open()
    await first

    assert (await good).outputs["value"].tolist() == [3.0]
    assert (await other).outputs["value"].tolist() == [6.0]
    with pytest.raises(InvalidRequestError, match="out of data bounds"):
        await bad
    assert runs == [1, 3, 1, 1, 1]  # the merged run failed, then one by one


async def test_full_queue_raises_overloaded(
    batcher: tuple[Batcher, list[int]], gather: LoadedModel, gate: Gate
) -> None:
    b, _ = batcher
    held = [asyncio.create_task(b.submit(gather, idx(0), 1))]
    await eventually(lambda: gather.in_flight == 1, "held")
    held += [asyncio.create_task(b.submit(gather, idx(1), 1)) for _ in range(6)]
    await eventually(lambda: b.depth == 6, "queue full")

    with pytest.raises(OverloadedError) as caught:
        await b.submit(gather, idx(1), 1)

    assert caught.value.retry_after_s == 1.0
    gate.open()
    await b.close()  # the running batch finishes; what is still queued is refused
    await held[0]
    for task in held[1:]:
        with pytest.raises(ShuttingDownError):
            await task


async def test_models_and_shapes_that_differ_are_not_merged(
    batcher: tuple[Batcher, list[int]], gather: LoadedModel, gather_model: Path, gate: Gate
) -> None:
    b, runs = batcher
    other_version = load_model(gather_model, name="gather", version=2)
    first = asyncio.create_task(b.submit(gather, idx(0), 1))
    await eventually(lambda: gather.in_flight == 1, "held")
    tasks = [
        asyncio.create_task(b.submit(gather, idx(1), 1)),
        asyncio.create_task(b.submit(other_version, idx(2), 1)),
        asyncio.create_task(b.submit(gather, idx(3), 1)),
    ]
    await eventually(lambda: b.depth == 3, "queued")

    gate.open()
    results = await asyncio.gather(first, *tasks)

    assert [r.model.version for r in results] == [1, 1, 2, 1]
    assert runs == [1, 1, 1, 1]  # FIFO: a different model version in between splits batches


async def test_cancelled_requests_are_skipped(
    batcher: tuple[Batcher, list[int]], gather: LoadedModel, gate: Gate
) -> None:
    b, runs = batcher
    first = asyncio.create_task(b.submit(gather, idx(0), 1))
    await eventually(lambda: gather.in_flight == 1, "held")
    gone = asyncio.create_task(b.submit(gather, idx(1), 1))
    kept = asyncio.create_task(b.submit(gather, idx(2), 1))
    await eventually(lambda: b.depth == 2, "queued")
    gone.cancel()

    gate.open()
    await first

    assert (await kept).outputs["value"].tolist() == [3.0]
    assert runs == [1, 1]


async def test_unbatchable_models_run_one_request_at_a_time(tmp_path: Path, gate: Gate) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=OPSET)
    proto.ir_version = 8
    model = load_model(proto.SerializeToString(), name="fixed", version=1)
    runs: list[int] = []
    b = Batcher("fixed", BatchPolicy(), gate.executor, runs.append)
    b.start()
    x = {"x": np.ones((1, 2), np.float32)}
    tasks = [asyncio.create_task(b.submit(model, x, 1)) for _ in range(3)]
    await eventually(lambda: model.in_flight == 1 and b.depth == 2, "held")

    gate.open()
    await asyncio.gather(*tasks)
    await b.close()

    assert not model.batchable
    assert runs == [1, 1, 1]


async def test_closed_batcher_refuses_work(gather: LoadedModel, gate: Gate) -> None:
    b = Batcher("gather", BatchPolicy(), gate.executor)
    b.start()
    await b.close()

    with pytest.raises(ShuttingDownError):
        await b.submit(gather, idx(1), 1)


def test_merge_and_split_round_trip(gather: LoadedModel) -> None:
    parts = [idx(1), idx(2, 3), idx(4)]
    merged = merge_inputs(parts)
    np.testing.assert_array_equal(merged["idx"], [1, 2, 3, 4])

    split = split_outputs({"value": merged["idx"] * 10}, [1, 2, 1], gather)

    assert [s["value"].tolist() for s in split] == [[10], [20, 30], [40]]


async def test_close_while_filling_a_batch_answers_its_requests(
    gather: LoadedModel, gate: Gate
) -> None:
    policy = BatchPolicy(max_queue_delay_s=30.0, max_concurrent_batches=2)
    b = Batcher("gather", policy, gate.executor)
    b.start()
    first = asyncio.create_task(b.submit(gather, idx(0), 1))
    await eventually(lambda: gather.in_flight == 1, "first batch held")
    waiting = asyncio.create_task(b.submit(gather, idx(1), 1))
    await asyncio.sleep(0)  # let it reach the queue
    await eventually(lambda: b.depth == 0, "taken into a batch that waits to fill")
    assert not waiting.done()

    gate.open()
    await b.close()

    assert (await first).outputs["value"].tolist() == [0.0]
    with pytest.raises(ShuttingDownError):
        await waiting
