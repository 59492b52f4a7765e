"""Dynamic batching: concurrent requests for one model become one session.run.

Rules (docs/inference-api.md, "Batching"):
* A request that finds the model idle is dispatched at once: a lone request never waits. It
  runs from the request's own task (no queue, no dispatcher, no task of its own), and for a
  model whose measured session.run is cheaper than the hand-off to the inference thread
  (costs.py), on the event loop itself; requests already on their way join it.
* Requests arriving while a batch of the model runs queue behind it; the next batch takes
  as many as fit (`max_batch_size` rows) and, since such traffic is concurrent by
  definition, waits at most `max_queue_delay_s` for more to fill it.
* Only requests for the very same LoadedModel with the same trailing shapes are merged, so
  a batch runs on exactly one model version; models without a shared variable dimension 0
  run one request per session.run.
* The queue is bounded: a full queue refuses new requests with OverloadedError.
* If a merged batch fails, its requests are retried one by one, so one bad request cannot
  fail its neighbours.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge_agent.errors import InferenceError, OverloadedError, ShuttingDownError
from edge_agent.runtime.model import Array, LoadedModel
from edge_common.supervise import watch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPolicy:
    """Limits of one model's batcher."""

    max_batch_size: int = 64  # rows in one merged session.run
    max_queue_delay_s: float = 0.002  # longest wait for more requests while the model is busy
    max_queue_size: int = 256  # requests waiting; beyond it new ones are refused
    max_concurrent_batches: int = 1  # session.run calls of this model in flight at once
    retry_after_s: float = 1.0  # the hint given to refused clients


@dataclass(frozen=True)
class BatchResult:
    """One request's share of a batch: its output rows and the model that produced them."""

    model: LoadedModel
    outputs: dict[str, Array]
    batch_size: int  # rows in the session.run that produced these outputs
    run_ns: int = 0  # how long that session.run took (the statistics extension reports it)


@dataclass(eq=False)
class _Item:
    model: LoadedModel
    inputs: Mapping[str, Array]
    rows: int
    future: asyncio.Future[BatchResult]
    busy_on_arrival: bool  # a batch of this model was running when the request came
    signature: tuple[Any, ...] = field(init=False)
    elements: int = field(init=False)  # input elements, what an inline run is bounded by

    def __post_init__(self) -> None:
        self.signature = (id(self.model), stack_signature(self.inputs))
        self.elements = sum(int(v.size) for v in self.inputs.values())


class Batcher:
    """Queues requests for one model name and runs them in merged batches off the loop."""

    def __init__(
        self,
        name: str,
        policy: BatchPolicy,
        executor: Executor,
        on_batch: Callable[[int], None] | None = None,
        on_run: Callable[[LoadedModel, int, int], None] | None = None,
        *,
        handoff_ns: float | None = None,
    ) -> None:
        self.name = name
        self._policy = policy
        self._executor = executor
        self._on_batch = on_batch
        self._on_run = on_run  # (model, rows, nanoseconds) after each successful session.run
        # The measured round trip through `executor` (costs.py); None: nothing runs inline.
        self.handoff_ns = handoff_ns
        self._queue: deque[_Item] = deque()
        self._arrived = asyncio.Event()
        self._freed = asyncio.Event()  # a batch finished while requests were queued
        self._running: set[asyncio.Future[Any]] = set()
        self._in_progress = 0  # batches started and not yet finished (at most max_concurrent)
        self._dispatcher: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def depth(self) -> int:
        """Requests waiting to be dispatched."""
        return len(self._queue)

    def start(self) -> None:
        """Start the dispatcher task (owned by this batcher, stopped by `close`)."""
        if self._dispatcher is None:
            self._dispatcher = asyncio.create_task(self._dispatch(), name=f"batcher-{self.name}")
            watch(self._dispatcher, long_lived=True)  # requests would wait forever without it

    async def close(self) -> None:
        """Stop dispatching, let running batches finish, refuse whatever is still queued."""
        self._closed = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        await asyncio.gather(*self._running, return_exceptions=True)
        while self._queue:
            item = self._queue.popleft()
            if not item.future.done():
                item.future.set_exception(ShuttingDownError("the server is shutting down"))

    async def submit(
        self, model: LoadedModel, inputs: Mapping[str, Array], rows: int
    ) -> BatchResult:
        """Run one validated request on `model` (merged with others when it can) and wait
        for its outputs."""
        if self._closed:
            raise ShuttingDownError("the server is shutting down")
        rows = rows if model.batchable else 1
        if self._queue or self._in_progress:
            return await self._enqueue(model, inputs, rows)
        # The model is idle: this request leads a batch from its own task.
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        item = _Item(model, inputs, rows, future, busy_on_arrival=False)
        self._in_progress += 1
        limit = self._inline_elements(model)
        if limit and item.elements <= limit:
            await self._lead_inline(item, limit)
        else:
            self._lead_off_loop(item)
        return await future

    async def _enqueue(
        self, model: LoadedModel, inputs: Mapping[str, Array], rows: int
    ) -> BatchResult:
        if len(self._queue) >= self._policy.max_queue_size:
            raise OverloadedError(
                f"model {self.name!r} has {len(self._queue)} requests queued, the limit; "
                "retry later",
                retry_after_s=self._policy.retry_after_s,
            )
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        self._queue.append(_Item(model, inputs, rows, future, self._in_progress > 0))
        self._arrived.set()
        return await future

    def _inline_elements(self, model: LoadedModel) -> int:
        """The largest batch, in input elements, that `model` runs on the loop (0: none)."""
        if self.handoff_ns is None or model.run_cost is None:
            return 0
        return model.run_cost.inline_elements(self.handoff_ns)

    async def _lead_inline(self, item: _Item, limit: int) -> None:
        """Run `item` on the loop, with the compatible requests that queue behind it while it
        lets the loop go once (they were already on their way: their tasks were ready)."""
        batch = [item]
        try:
            if item.model.batchable:
                await asyncio.sleep(0)
                self._take(batch, elements=limit)
        except BaseException:
            self._finish_slot()
            raise
        self._run_inline(batch)

    def _run_inline(self, batch: list[_Item]) -> None:
        try:
            try:
                results = self._execute_inline(batch)
            except Exception as e:  # noqa: BLE001 - every failure must reach the waiting clients
                if len(batch) == 1:
                    _settle_error(batch[0], e)
                    return
                log.warning("model %s: batch of %d failed (%s); retrying one by one",
                            self.name, len(batch), e)  # fmt: skip
                for item in batch:
                    try:
                        (result,) = self._execute_inline([item])
                    except Exception as error:  # noqa: BLE001 - reaches its client
                        _settle_error(item, error)
                    else:
                        _settle(item, result)
                return
            for item, result in zip(batch, results, strict=True):
                _settle(item, result)
        finally:
            self._finish_slot()

    def _execute_inline(self, batch: list[_Item]) -> list[BatchResult]:
        model, merged, rows = self._prepare(batch)
        model.acquire()
        try:
            started = time.perf_counter_ns()
            outputs = model.run(merged)
            run_ns = time.perf_counter_ns() - started
        finally:
            model.release()
        return self._results(model, outputs, rows, run_ns)

    def _lead_off_loop(self, item: _Item) -> None:
        """Hand `item` to the executor at once; its batch runs in a task of its own, so that
        the request going away cannot cut the run short (the model stays held until it ends)."""
        task = asyncio.ensure_future(self._run([item]))
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    async def _dispatch(self) -> None:
        while True:
            await self._wait_for_arrival()
            while self._in_progress >= self._policy.max_concurrent_batches:
                self._freed.clear()
                await self._freed.wait()
            self._in_progress += 1
            try:
                batch = await self._next_batch()
            except BaseException:
                self._finish_slot()
                raise
            if not batch:
                self._finish_slot()
                continue
            limit = self._inline_elements(batch[0].model)
            if limit and sum(item.elements for item in batch) <= limit:
                # A queued batch as cheap as the hand-off runs on the loop too. Were it handed
                # to the executor, the loop would be free while it ran, the next requests would
                # queue behind it and go the same way: once one batch took the thread, every
                # later one would, and two starts of one server settled at different costs.
                self._run_inline(batch)
                if self._queue:
                    await asyncio.sleep(0)  # the answers go out before the next batch runs
                continue
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _finish_slot(self) -> None:
        self._in_progress -= 1
        if self._queue:
            self._freed.set()

    async def _next_batch(self) -> list[_Item]:
        batch = self._take([])
        if not batch:
            return batch  # every queued request went away: the dispatcher waits again
        first = batch[0]
        if first.busy_on_arrival and first.model.batchable and self._policy.max_queue_delay_s:
            try:
                await self._fill(batch)
            except asyncio.CancelledError:
                self._queue.extendleft(reversed(batch))  # so that `close` answers them
                raise
        return batch

    async def _wait_for_arrival(self) -> None:
        while not self._queue:
            self._arrived.clear()
            await self._arrived.wait()

    async def _fill(self, batch: list[_Item]) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._policy.max_queue_delay_s
        while sum(item.rows for item in batch) < self._policy.max_batch_size:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                async with asyncio.timeout(remaining):
                    await self._wait_for_arrival()
            except TimeoutError:
                return
            if not self._take(batch):
                return  # the next queued request cannot join this batch

    def _take(self, batch: list[_Item], elements: int | None = None) -> list[_Item]:
        """Move compatible requests from the queue front into `batch` (at most `elements`
        input elements in all, when given); return those added."""
        added: list[_Item] = []
        rows = sum(item.rows for item in batch)
        size = sum(item.elements for item in batch)
        while self._queue:
            item = self._queue[0]
            if item.future.done():  # its client went away while it waited
                self._queue.popleft()
                continue
            if batch and not self._joins(batch[0], item, rows):
                break
            if batch and elements is not None and size + item.elements > elements:
                break
            self._queue.popleft()
            batch.append(item)
            added.append(item)
            rows += item.rows
            size += item.elements
        return added

    def _joins(self, first: _Item, item: _Item, rows: int) -> bool:
        return (
            first.model.batchable
            and item.signature == first.signature
            and rows + item.rows <= self._policy.max_batch_size
        )

    async def _run(self, batch: list[_Item]) -> None:
        try:
            try:
                results = await self._execute(batch)
            except Exception as e:  # noqa: BLE001 - every failure must reach the waiting clients
                if len(batch) == 1:
                    _settle_error(batch[0], e)
                    return
                log.warning("model %s: batch of %d failed (%s); retrying one by one",
                            self.name, len(batch), e)  # fmt: skip
                for item in batch:
                    await self._run_alone(item)
                return
            for item, result in zip(batch, results, strict=True):
                _settle(item, result)
        finally:
            self._finish_slot()

    async def _run_alone(self, item: _Item) -> None:
        try:
            (result,) = await self._execute([item])
        except Exception as e:  # noqa: BLE001 - every failure must reach the waiting client
            _settle_error(item, e)
        else:
            _settle(item, result)

    async def _execute(self, batch: list[_Item]) -> list[BatchResult]:
        model, merged, rows = self._prepare(batch)
        model.acquire()
        try:
            loop = asyncio.get_running_loop()
            started = time.perf_counter_ns()
            outputs = await loop.run_in_executor(self._executor, model.run, merged)
            run_ns = time.perf_counter_ns() - started
        finally:
            model.release()
        return self._results(model, outputs, rows, run_ns)

    def _prepare(self, batch: list[_Item]) -> tuple[LoadedModel, dict[str, Array], list[int]]:
        rows = [item.rows for item in batch]
        merged = merge_inputs([item.inputs for item in batch])
        if self._on_batch is not None:
            self._on_batch(sum(rows))
        return batch[0].model, merged, rows

    def _results(
        self, model: LoadedModel, outputs: dict[str, Array], rows: list[int], run_ns: int
    ) -> list[BatchResult]:
        if self._on_run is not None:
            self._on_run(model, sum(rows), run_ns)
        parts = split_outputs(outputs, rows, model)
        return [BatchResult(model, part, sum(rows), run_ns) for part in parts]


def _settle(item: _Item, result: BatchResult) -> None:
    if not item.future.done():
        item.future.set_result(result)


def _settle_error(item: _Item, error: Exception) -> None:
    if not item.future.done():
        item.future.set_exception(error)


def stack_signature(inputs: Mapping[str, Array]) -> tuple[Any, ...]:
    """What inputs must share to be stacked into one session.run: every input's dtype and
    dimensions after the first (merge_inputs stacks along the first)."""
    return tuple(sorted((k, v.dtype.str, v.shape[1:]) for k, v in inputs.items()))


def merge_inputs(requests: list[Mapping[str, Array]]) -> dict[str, Array]:
    """Stack the requests' inputs along dimension 0 (no copy for a single request)."""
    if len(requests) == 1:
        return dict(requests[0])
    return {name: np.concatenate([r[name] for r in requests]) for name in requests[0]}


def split_outputs(
    outputs: Mapping[str, Array], rows: list[int], model: LoadedModel
) -> list[dict[str, Array]]:
    """Cut each output back into the requests' rows, in order."""
    if len(rows) == 1:
        return [dict(outputs)]
    total = sum(rows)
    for name, value in outputs.items():
        if value.ndim == 0 or value.shape[0] != total:
            raise InferenceError(
                f"model {model.name!r} output {name!r} has shape {list(value.shape)} "
                f"for a batch of {total} rows; it cannot be split per request"
            )
    cuts = np.cumsum(rows)[:-1]
    per_output = {name: np.split(value, cuts) for name, value in outputs.items()}
    return [{name: parts[i] for name, parts in per_output.items()} for i in range(len(rows))]
