"""The shadow: the candidate runs on every input after the control has answered, off the
response path, and only its agreement with the control is counted.

The answer never waits for the shadow: the request only appends to a bounded queue. A thread
of the shadow's own takes the inputs from it and does all of the shadow's work there (the run,
the comparison, the counting), so a slow shadow never takes a thread the served model needs
and the event loop is not woken once per shadow run. That thread runs at the lowest
scheduling priority the system gives a thread (nice 19 on Linux): on a device with one or two
cores the shadow's session.run would otherwise take the CPU from the next answer, which then
waits for it; at nice 19 the scheduler hands the CPU to the answering threads as soon as they
have work, and the shadow gets what is left. When the queue is full the new input is dropped
(counted): under load the shadow is the first thing to give way.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from edge_agent.errors import AgentError, ModelNotReadyError
from edge_agent.experiments.answers import Answer, abs_difference, read_answer, same_label
from edge_agent.experiments.counters import ExperimentCounters
from edge_agent.runtime.model import Array, LoadedModel

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
        self._ready = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._work, name=f"shadow-{model.name}", daemon=True)

    @property
    def depth(self) -> int:
        """Inputs waiting for the shadow."""
        return len(self._queue)

    def start(self) -> None:
        """Start the shadow's thread."""
        self._thread.start()

    def offer(self, inputs: Mapping[str, Array], control: Answer | None) -> None:
        """Queue one request's inputs for the shadow, or drop them when the queue is full."""
        if len(self._queue) >= self._capacity:
            self._count(shadow_dropped=1)
            return
        with self._ready:
            self._queue.append(_Job(inputs, control))
            self._ready.notify()

    async def close(self) -> None:
        """Forget what is queued, let the run in progress end, let the model go."""
        with self._ready:
            self._closed = True
            self._queue.clear()
            self._ready.notify()
        if self._thread.is_alive():
            await asyncio.to_thread(self._thread.join)

    def _next(self) -> _Job | None:
        with self._ready:
            while not self._queue and not self._closed:
                self._ready.wait()
            return None if self._closed else self._queue.popleft()

    def _work(self) -> None:
        lower_priority()
        while (job := self._next()) is not None:
            try:
                self.model.acquire()
            except ModelNotReadyError:  # the shadow was retired: nothing more to run
                return
            try:
                outputs = self.model.run(job.inputs)
            except AgentError as e:  # model.run raises only these for a bad run
                log.debug("shadow %r failed on an input: %s", self.model, e)
                self._count(shadow_runs=1, shadow_failed=1)
                continue
            finally:
                self.model.release()
            try:
                self._compare(job.control, outputs)
            except Exception:  # the shadow must go on; its counts are what it is for
                log.exception("shadow %r could not compare an answer", self.model)

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
