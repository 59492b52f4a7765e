"""The shadow: the candidate runs on every input after the control has answered, off the
response path, and only its agreement with the control is counted.

The answer never waits for the shadow: the request only appends to a bounded queue. When the
queue is full the new input is dropped (counted): under load the shadow is the first thing
to give way.

The shadow runs in gathered batches, not once per request. One worker task waits until half
the queue is filled or its oldest input has waited `GATHER_S`, then stacks the inputs that
share their trailing shapes into one session.run (at most `MAX_RUN_ROWS` rows) and compares
the whole batch at once. Per request that leaves an append to a deque: the hand-off to the
thread, the loop's wake-up and the comparison are paid once per batch, so on a device with
one core they meet an answer's request in one batch of many rather than on every request.

session.run runs on a thread of its own at the idle scheduling class (Linux's SCHED_IDLE,
for that thread alone; nice 19 where that is refused), so a slow shadow never takes a thread
the served model needs and the scheduler hands the core to any answer the moment it is
ready: a nice-19 thread may still finish its slice first, an idle one is preempted at once.
Only session.run runs there: a thread of the lowest priority holding the interpreter lock
through Python work would make the answers wait for it. The comparison runs on the loop in
slices of `COMPARE_SLICE` inputs, looking again for requests between two slices, so an
answer that arrives meanwhile waits for one slice, not for the whole batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from edge_agent.errors import AgentError, ModelNotReadyError
from edge_agent.experiments.answers import Answer, abs_difference, predictions, same_label
from edge_agent.experiments.counters import ExperimentCounters
from edge_agent.runtime.batching import merge_inputs, stack_signature
from edge_agent.runtime.model import Array, LoadedModel
from edge_common.supervise import watch

log = logging.getLogger(__name__)

SHADOW_NICENESS = 19  # where the idle class is refused: the lowest nice value
GATHER_S = 0.05  # the longest an input waits for others to share its session.run
MAX_RUN_ROWS = 256  # rows stacked into one shadow session.run
COMPARE_SLICE = 8  # inputs compared between two looks for requests: what an answer may wait for


class ServingActivity(Protocol):
    """What the shadow learns from the server (edge_agent/server/answering.py)."""

    async def quiet(self) -> None:
        """Return at a moment no request is being answered."""


async def _at_once() -> None:
    """No server to wait for (a runner on its own)."""


@dataclass(frozen=True, slots=True)
class _Job:
    inputs: Mapping[str, Array]
    control: Answer | None
    rows: int


def lower_priority() -> None:
    """Put the calling thread in the idle scheduling class (Linux: a thread is a task with its
    own policy), else at nice 19; elsewhere the shadow runs at the normal priority."""
    tid = threading.get_native_id()
    try:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
        return
    except (AttributeError, OSError) as e:  # not Linux, or a sandbox that refuses it
        log.info("the shadow thread stays out of the idle class: %s", e)
    try:
        os.setpriority(os.PRIO_PROCESS, tid, SHADOW_NICENESS)
    except (AttributeError, OSError) as e:  # no setpriority (not Unix), or not permitted
        log.info("the shadow runs at the normal priority: %s", e)


def plan_runs(jobs: list[_Job], batchable: bool) -> list[list[_Job]]:
    """Consecutive jobs of the same trailing shapes share one run, up to MAX_RUN_ROWS rows;
    a model without a shared batch axis runs each job alone."""
    if not batchable:
        return [[job] for job in jobs]
    runs: list[list[_Job]] = []
    signature: tuple[Any, ...] = ()
    rows = 0
    for job in jobs:
        mine, count = stack_signature(job.inputs), job.rows
        if runs and mine == signature and rows + count <= MAX_RUN_ROWS:
            runs[-1].append(job)
            rows += count
        else:
            runs.append([job])
            signature, rows = mine, count
    return runs


class ShadowRunner:
    """Runs `model` on the inputs offered to it, compares with the control's answers."""

    def __init__(
        self,
        model: LoadedModel,
        counters: ExperimentCounters,
        capacity: int,
        quiet: Callable[[], Awaitable[None]] = _at_once,
    ) -> None:
        self.model = model
        self._quiet = quiet  # returns at a moment no request is being answered
        self._counters = counters
        self._counts = counters.variant(model.name, model.version)  # a drop adds to it
        self._queue: deque[_Job] = deque()
        self._capacity = capacity
        self._batch_jobs = max(1, capacity // 2)  # a queue this full runs without waiting
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(
            1, thread_name_prefix=f"shadow-{model.name}", initializer=lower_priority
        )
        self._task: asyncio.Task[None] | None = None
        self.totals = {"ran": 0, "dropped": 0, "failed": 0}  # inputs since the start

    @property
    def depth(self) -> int:
        """Inputs waiting for the shadow."""
        return len(self._queue)

    def start(self) -> None:
        """Start the worker (on the running event loop)."""
        self._task = asyncio.get_running_loop().create_task(
            self._work(), name=f"shadow {self.model.name} v{self.model.version}"
        )
        watch(self._task)

    def offer(self, inputs: Mapping[str, Array], control: Answer | None) -> None:
        """Queue one request's inputs for the shadow, or drop them when the queue is full."""
        if len(self._queue) >= self._capacity:
            self.totals["dropped"] += 1
            self._counts.shadow_dropped += 1
            return
        first = next(iter(inputs.values()), None)
        rows = int(first.shape[0]) if first is not None and first.ndim else 1
        self._queue.append(_Job(inputs, control, rows))
        if len(self._queue) in (1, self._batch_jobs):  # the first starts the wait, then full
            self._wake.set()

    async def close(self) -> None:
        """Stop the worker, forget what is queued, let the model go."""
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _work(self) -> None:
        while True:
            await self._gathered()
            await self._between_requests()
            jobs = list(self._queue)
            self._queue.clear()
            try:
                self.model.acquire()
            except ModelNotReadyError:  # the shadow was retired: nothing more to run
                return
            try:
                await self._run(jobs)
            finally:
                self.model.release()

    async def _gathered(self) -> None:
        """Return once the queue is half full or its oldest input has waited GATHER_S."""
        while not self._queue:
            self._wake.clear()
            await self._wake.wait()
        if len(self._queue) < self._batch_jobs:
            self._wake.clear()
            try:
                async with asyncio.timeout(GATHER_S):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _between_requests(self) -> None:
        """Return at a moment no request is being answered. While the server is never idle
        the shadow waits and its full queue drops what comes (counted): under load the
        shadow gives way first."""
        await self._quiet()

    async def _run(self, jobs: list[_Job]) -> None:
        loop = asyncio.get_running_loop()
        runs = plan_runs(jobs, self.model.batchable)
        merged = [merge_inputs([job.inputs for job in run]) for run in runs]
        outcomes = await loop.run_in_executor(self._executor, self._run_each, merged)
        counts: dict[str, float] = {}
        for run, outcome in zip(runs, outcomes, strict=True):
            if isinstance(outcome, AgentError) and len(run) > 1:
                # One bad input must not cost its neighbours their comparison.
                alone = [dict(job.inputs) for job in run]
                singles = await loop.run_in_executor(self._executor, self._run_each, alone)
                for job, single in zip(run, singles, strict=True):
                    await self._compare([job], single, counts)
            else:
                await self._compare(run, outcome, counts)
        self._count(**counts)

    def _run_each(self, merged: list[dict[str, Array]]) -> list[dict[str, Array] | AgentError]:
        """On the shadow's thread: session.run on each stacked input, its failure kept."""
        outcomes: list[dict[str, Array] | AgentError] = []
        for inputs in merged:
            try:
                outcomes.append(self.model.run(inputs))
            except AgentError as e:  # model.run raises only these for a bad run
                outcomes.append(e)
        return outcomes

    async def _compare(
        self, run: list[_Job], outcome: dict[str, Array] | AgentError, counts: dict[str, float]
    ) -> None:
        """Count one run's agreement with the control, a slice of its inputs at a time, each
        slice at a moment no request is being answered."""
        _add(counts, "shadow_runs", len(run))
        if isinstance(outcome, AgentError):
            log.debug("shadow %r failed on an input: %s", self.model, outcome)
            _add(counts, "shadow_failed", len(run))
            return
        await self._between_requests()
        found = predictions(outcome, self.model.io)
        if found is None:
            return
        kind, mine = found
        if len(run) > 1 and len(mine) != sum(job.rows for job in run):
            return  # a stacked output that is not one row per input row cannot be shared out
        start = 0
        for index, job in enumerate(run):
            if index and index % COMPARE_SLICE == 0:
                await asyncio.sleep(0)  # the loop reads what has arrived before the next slice
                await self._between_requests()
            rows = mine[start : start + job.rows] if len(run) > 1 else mine
            start += job.rows
            if job.control is not None and job.control.kind == kind:
                _add_agreement(counts, kind, list(zip(rows, job.control.rows, strict=False)))

    def _count(self, **increments: float) -> None:
        self.totals["ran"] += int(increments.get("shadow_runs", 0))
        self.totals["failed"] += int(increments.get("shadow_failed", 0))
        if increments:
            self._counters.update(self.model.name, self.model.version, **increments)


def _add(counts: dict[str, float], key: str, amount: float) -> None:
    counts[key] = counts.get(key, 0) + amount


def _add_agreement(counts: dict[str, float], kind: str, pairs: list[tuple[Any, Any]]) -> None:
    if kind == "label":
        _add(counts, "shadow_labels", len(pairs))
        _add(counts, "shadow_agreed", sum(same_label(a, b) for a, b in pairs))
        return
    differences = [d for a, b in pairs if (d := abs_difference(a, b)) is not None]
    _add(counts, "shadow_values", len(differences))
    _add(counts, "shadow_abs_diff_sum", sum(differences))
    _add(counts, "shadow_abs_diff_sq_sum", sum(d * d for d in differences))
