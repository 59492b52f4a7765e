"""What a session.run costs and what handing it to the inference thread costs, both measured.

A request whose session.run takes less time than the hand-off to the inference thread and back
(a future, a thread wake-up, a wake-up of the event loop) is cheaper to run on the loop itself:
the loop waits less than it would spend on the hand-off. Both sides are measured, not guessed:
the model's cost when it is warmed up (before it serves), the hand-off once when the server
starts, on its own executor. A model runs inline only for batches no larger than what the
measurements say fits under the hand-off; anything larger goes to the thread as before.

Each cost is the fastest of its samples, not their median: on a shared machine other work only
ever adds time to a sample, and a median of a few moved with it far enough (a hand-off of 30
to 46 µs, one run of 16 to 33 µs) that two starts of one server on one model chose inline
batches of 8 rows and of 94. The fastest sample is what the code itself costs.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

PROBE_ROWS = 32  # the second measurement of a batchable model, to see how the cost grows
SAMPLES = 9  # timed runs per measurement (the fastest is kept)...
SAMPLES_BUDGET_NS = 20_000_000  # ...or fewer, once they have taken this long: a slow model
# gains nothing from more samples, and its warm-up delays the swap
# A model whose one-row run costs more than this never runs inline (a hand-off costs tens of
# µs): its cost at PROBE_ROWS rows is not measured, so a slow model's warm-up stays short.
INLINE_CANDIDATE_NS = 1_000_000
HANDOFF_SAMPLES = 32


@dataclass(frozen=True)
class RunCost:
    """session.run time of one model: fixed part plus a part per input element."""

    fixed_ns: float
    per_element_ns: float
    measured_elements: int  # input elements of the 1-row measurement
    # Measured at two sizes (batchable); if not, only inputs as small as the probe run inline.
    grows_linearly: bool

    def inline_elements(self, handoff_ns: float) -> int:
        """The most input elements whose run costs no more than `handoff_ns` (0: none)."""
        one = self.fixed_ns + self.per_element_ns * self.measured_elements
        if one > handoff_ns:
            return 0
        if not self.grows_linearly:
            return self.measured_elements
        if self.per_element_ns <= 0:
            return self.measured_elements * PROBE_ROWS
        fits = math.floor((handoff_ns - self.fixed_ns) / self.per_element_ns)
        return max(self.measured_elements, fits)


def time_runs(
    run: Callable[[], object], samples: int = SAMPLES, budget_ns: int = SAMPLES_BUDGET_NS
) -> float:
    """The shortest wall time of `samples` calls of `run` (fewer once they took `budget_ns`),
    in nanoseconds."""
    times: list[int] = []
    while len(times) < samples and sum(times) < budget_ns:
        began = time.perf_counter_ns()
        run()
        times.append(time.perf_counter_ns() - began)
    return float(min(times))


def fit(one: tuple[int, float], more: tuple[int, float] | None) -> RunCost:
    """The cost line through (elements, ns) of one row and, for a batchable model, of more."""
    elements, ns = one
    if more is None or more[0] <= elements:
        return RunCost(ns, 0.0, elements, grows_linearly=False)
    slope = max(0.0, (more[1] - ns) / (more[0] - elements))
    return RunCost(ns - slope * elements, slope, elements, grows_linearly=True)


def _nothing() -> None:
    return None


async def measure_handoff(executor: Executor, samples: int = HANDOFF_SAMPLES) -> float:
    """The shortest round trip of a call that does nothing through `executor`, in nanoseconds."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(executor, _nothing)  # the pool starts its thread
    times = []
    for _ in range(samples):
        began = time.perf_counter_ns()
        await loop.run_in_executor(executor, _nothing)
        times.append(time.perf_counter_ns() - began)
    return float(min(times))
