"""Owners for `serve`'s background tasks: one that dies unexpectedly ends the process, loudly.

The ingest, the broker resync and the upkeep loop run until cancelled; each survives its own
ordinary failures. If one ends anyway (an exception it did not expect, or a return), the
registry would go on answering the API while devices' reports, or the retained state after a
broker restart, silently stopped. So the first such end is logged once with its traceback and
sets `failed`; `serve` then shuts down in order and exits 1, for its service manager to restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TaskFailure:
    """Which task ended unexpectedly, and how."""

    task: str
    error: BaseException | None  # None: it returned, though it should run until cancelled

    def describe(self) -> str:
        """One line: `task 'broker resync' died: NotFoundError: ...`."""
        if self.error is None:
            return f"task {self.task!r} stopped unexpectedly"
        return f"task {self.task!r} died: {type(self.error).__name__}: {self.error}"


class Supervisor:
    """Starts the long-lived tasks and remembers the first that ended unexpectedly."""

    def __init__(self) -> None:
        self.failed = asyncio.Event()
        self.failure: TaskFailure | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start a task meant to run until cancelled: returning or raising is a failure."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._ended)
        return task

    async def stop(self) -> None:
        """Cancel every task, newest first, and wait for each."""
        self._stopping = True
        for task in reversed(self._tasks):
            task.cancel()
            # An exception other than the cancellation was already reported by _ended.
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if self._stopping:  # shutting down anyway: an error while unwinding is only logged
            if error is not None:
                trace = (type(error), error, error.__traceback__)
                log.error("task %r failed while stopping", task.get_name(), exc_info=trace)
            return
        failure = TaskFailure(task.get_name(), error)
        if self.failure is not None:
            log.error("%s (after an earlier failure)", failure.describe())
            return
        self.failure = failure
        info = (type(error), error, error.__traceback__) if error is not None else None
        log.critical("%s; the registry stops and exits 1", failure.describe(), exc_info=info)
        self.failed.set()
