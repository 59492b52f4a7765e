"""Dynamic batching: concurrent requests for one model become one session.run.

Rules (docs/inference-api.md, "Batching"):
* A request that finds the model idle is dispatched at once: a lone request never waits.
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

    def __post_init__(self) -> None:
        # Requests merge only when every input agrees on dtype and dimensions after the first.
        shapes = sorted((k, v.dtype.str, v.shape[1:]) for k, v in self.inputs.items())
        self.signature = (id(self.model), tuple(shapes))


class Batcher:
    """Queues requests for one model name and runs them in merged batches off the loop."""

    def __init__(
        self,
        name: str,
        policy: BatchPolicy,
        executor: Executor,
        on_batch: Callable[[int], None] | None = None,
        on_run: Callable[[LoadedModel, int, int], None] | None = None,
    ) -> None:
        self.name = name
        self._policy = policy
        self._executor = executor
        self._on_batch = on_batch
        self._on_run = on_run  # (model, rows, nanoseconds) after each successful session.run
        self._queue: deque[_Item] = deque()
        self._arrived = asyncio.Event()
        self._slots = asyncio.Semaphore(policy.max_concurrent_batches)
        self._running: set[asyncio.Task[None]] = set()
        self._in_progress = 0  # batches dispatched and not yet finished
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
        """Queue one validated request on `model` and wait for its outputs."""
        if self._closed:
            raise ShuttingDownError("the server is shutting down")
        if len(self._queue) >= self._policy.max_queue_size:
            raise OverloadedError(
                f"model {self.name!r} has {len(self._queue)} requests queued, the limit; "
                "retry later",
                retry_after_s=self._policy.retry_after_s,
            )
        future: asyncio.Future[BatchResult] = asyncio.get_running_loop().create_future()
        rows = rows if model.batchable else 1
        self._queue.append(_Item(model, inputs, rows, future, self._in_progress > 0))
        self._arrived.set()
        return await future

    async def _dispatch(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            self._in_progress += 1
            task = asyncio.create_task(self._run(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[_Item]:
        batch: list[_Item] = []
        while not batch:
            await self._wait_for_arrival()
            batch = self._take([])
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

    def _take(self, batch: list[_Item]) -> list[_Item]:
        """Move compatible requests from the queue front into `batch`; return those added."""
        added: list[_Item] = []
        rows = sum(item.rows for item in batch)
        while self._queue:
            item = self._queue[0]
            if item.future.done():  # its client went away while it waited
                self._queue.popleft()
                continue
            if batch and not self._joins(batch[0], item, rows):
                break
            self._queue.popleft()
            batch.append(item)
            added.append(item)
            rows += item.rows
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
                if not item.future.done():
                    item.future.set_result(result)
        finally:
            self._in_progress -= 1
            self._slots.release()

    async def _run_alone(self, item: _Item) -> None:
        try:
            (result,) = await self._execute([item])
        except Exception as e:  # noqa: BLE001 - every failure must reach the waiting client
            _settle_error(item, e)
        else:
            if not item.future.done():
                item.future.set_result(result)

    async def _execute(self, batch: list[_Item]) -> list[BatchResult]:
        model = batch[0].model
        merged = merge_inputs([item.inputs for item in batch])
        rows = [item.rows for item in batch]
        if self._on_batch is not None:
            self._on_batch(sum(rows))
        model.acquire()
        try:
            loop = asyncio.get_running_loop()
            started = time.perf_counter_ns()
            outputs = await loop.run_in_executor(self._executor, model.run, merged)
            run_ns = time.perf_counter_ns() - started
        finally:
            model.release()
        if self._on_run is not None:
            self._on_run(model, sum(rows), run_ns)
        parts = split_outputs(outputs, rows, model)
        return [BatchResult(model, part, sum(rows), run_ns) for part in parts]


def _settle_error(item: _Item, error: Exception) -> None:
    if not item.future.done():
        item.future.set_exception(error)


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
