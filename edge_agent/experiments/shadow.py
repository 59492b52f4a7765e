"""The shadow: the candidate runs on every input after the control has answered, off the
response path, and only its agreement with the control is counted.

The answer never waits for the shadow: the request only appends to a bounded queue. One
worker task drains it on a thread of its own, so a slow shadow never takes a thread the
served model needs. When the queue is full the new input is dropped (counted): under load
the shadow is the first thing to give way.

That thread runs at the lowest scheduling priority (nice 19, for it alone): on a device with
one core the shadow's session.run would otherwise take turns with the answers' runs and
their p99 would grow by the shadow's time. At nice 19 the scheduler gives the CPU to any
answer that is ready first, and the shadow uses what is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from edge_agent.errors import AgentError, ModelNotReadyError
from edge_agent.experiments.answers import Answer, abs_difference, read_answer, same_label
from edge_agent.experiments.counters import ExperimentCounters
from edge_agent.runtime.model import Array, LoadedModel
from edge_common.supervise import watch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Job:
    inputs: Mapping[str, Array]
    control: Answer | None


SHADOW_NICENESS = 19  # the lowest priority: the shadow yields the CPU to every answer


def lower_priority() -> None:
    """Lower the calling thread's scheduling priority (Linux: a thread is a task with its own
    nice value); elsewhere, or when refused, the shadow runs at the normal priority."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), SHADOW_NICENESS)
    except (AttributeError, OSError) as e:  # no setpriority (not Unix), or not permitted
        log.info("the shadow runs at the normal priority: %s", e)


class ShadowRunner:
    """Runs `model` on the inputs offered to it, compares with the control's answers."""

    def __init__(self, model: LoadedModel, counters: ExperimentCounters, capacity: int) -> None:
        self.model = model
        self._counters = counters
        self._queue: deque[_Job] = deque()
        self._capacity = capacity
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(
            1, thread_name_prefix=f"shadow-{model.name}", initializer=lower_priority
        )
        self._task: asyncio.Task[None] | None = None

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
            self._count(shadow_dropped=1)
            return
        self._queue.append(_Job(inputs, control))
        self._wake.set()

    async def close(self) -> None:
        """Stop the worker, forget what is queued, let the model go."""
        self._queue.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            job = self._queue.popleft()
            try:
                self.model.acquire()
            except ModelNotReadyError:  # the shadow was retired: nothing more to run
                return
            try:
                outputs = await loop.run_in_executor(self._executor, self.model.run, job.inputs)
            except AgentError as e:  # model.run raises only these for a bad run
                log.debug("shadow %r failed on an input: %s", self.model, e)
                self._count(shadow_runs=1, shadow_failed=1)
                continue
            finally:
                self.model.release()
            self._compare(job.control, outputs)

    def _compare(self, control: Answer | None, outputs: Mapping[str, Array]) -> None:
        mine = read_answer(self.model.name, self.model.version, outputs, self.model.io)
        counts: dict[str, float] = {"shadow_runs": 1}
        if control is not None and mine is not None and mine.kind == control.kind:
            pairs = list(zip(mine.rows, control.rows, strict=False))
            if control.kind == "label":
                counts["shadow_labels"] = len(pairs)
                counts["shadow_agreed"] = sum(same_label(a, b) for a, b in pairs)
            else:
                differences = [d for a, b in pairs if (d := abs_difference(a, b)) is not None]
                counts["shadow_values"] = len(differences)
                counts["shadow_abs_diff_sum"] = sum(differences)
                counts["shadow_abs_diff_sq_sum"] = sum(d * d for d in differences)
        self._count(**counts)

    def _count(self, **increments: float) -> None:
        self._counters.update(self.model.name, self.model.version, **increments)
