"""Owners for background tasks: a task that dies unexpectedly ends the process, loudly.

A device whose broker follower died still serves and still feeds the systemd watchdog, but it
is deaf to updates; a registry whose ingest died still answers the API while devices' reports
pile up unread. Nobody would know. So every long-lived task of `edge-agent run` and of
`model-registry serve` is started by, or watched by, the process's `Supervisor`: the first
unexpected end (an exception, or a return from a task meant to run until cancelled) is logged
once with its traceback, recorded as `failure`, and sets `failed`, which makes the process stop
in order and exit non-zero so that its service manager restarts it. Cancellation is never a
failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

# The supervisor of each running event loop, so that components which create their own tasks
# (batchers, update jobs) can put them under it without being handed one.
_INSTALLED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Supervisor] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True)
class TaskFailure:
    """Which task ended unexpectedly, and how."""

    task: str
    error: BaseException | None  # None: it returned, though it should run until cancelled

    def describe(self) -> str:
        """One line: `task 'mqtt' died: OSError: ...`."""
        if self.error is None:
            return f"task {self.task!r} stopped unexpectedly"
        return f"task {self.task!r} died: {type(self.error).__name__}: {self.error}"


class Supervisor:
    """Starts and watches background tasks; remembers the first that ended unexpectedly."""

    def __init__(self, process: str = "the process") -> None:
        self.process = process  # who stops, in the log line of a failure: "the agent"
        self.failed = asyncio.Event()
        self.failure: TaskFailure | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False

    def install(self) -> None:
        """Become the supervisor that `watch` reports to on the running loop."""
        _INSTALLED[asyncio.get_running_loop()] = self

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start a task meant to run until cancelled: returning or raising is a failure."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(lambda t: self._ended(t, long_lived=True))
        return task

    def adopt(self, task: asyncio.Task[Any], *, long_lived: bool) -> None:
        """Watch a task someone else owns (and cancels); raising is a failure."""
        task.add_done_callback(lambda t: self._ended(t, long_lived=long_lived))

    def fail(self, failure: TaskFailure) -> None:
        """Record a failure; only the first is logged with its traceback."""
        if self.failure is not None:
            log.error("%s (after an earlier failure)", failure.describe())
            return
        self.failure = failure
        error = failure.error
        trace = (type(error), error, error.__traceback__) if error is not None else None
        log.critical("%s; %s stops and exits 1", failure.describe(), self.process, exc_info=trace)
        self.failed.set()

    async def cancel(self, task: asyncio.Task[Any]) -> None:
        """Stopping, in the caller's order: cancel one task and wait for it.

        From the first call on, the supervisor is stopping: no ending counts as a failure.
        """
        self._stopping = True
        task.cancel()
        # An exception other than the cancellation was already reported by _ended.
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task

    async def stop(self) -> None:
        """Cancel every remaining task, newest first, and wait for them."""
        self._stopping = True
        for task in reversed(self._tasks):
            await self.cancel(task)
        loop = asyncio.get_running_loop()
        if _INSTALLED.get(loop) is self:
            del _INSTALLED[loop]

    def _ended(self, task: asyncio.Task[Any], *, long_lived: bool) -> None:
        if task.cancelled():
            return
        error = task.exception()
        if self._stopping:  # shutting down anyway: an error while unwinding is only logged
            if error is not None:
                trace = (type(error), error, error.__traceback__)
                log.error("task %r failed while stopping", task.get_name(), exc_info=trace)
            return
        if error is not None or long_lived:
            self.fail(TaskFailure(task.get_name(), error))


def watch(task: asyncio.Task[Any], *, long_lived: bool = False) -> None:
    """Put a task under the running loop's supervisor; without one, log its unexpected end."""
    supervisor = _INSTALLED.get(asyncio.get_running_loop())
    if supervisor is not None:
        supervisor.adopt(task, long_lived=long_lived)
        return

    def orphan_ended(ended: asyncio.Task[Any]) -> None:
        if not ended.cancelled() and (error := ended.exception()) is not None:
            trace = (type(error), error, error.__traceback__)
            log.error("task %r died: %s", ended.get_name(), error, exc_info=trace)

    task.add_done_callback(orphan_ended)


async def first_of(*waits: Coroutine[Any, Any, Any]) -> None:
    """Wait until the first of `waits` finishes (a stop signal, a failure); cancel the others."""
    tasks = [asyncio.ensure_future(wait) for wait in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
