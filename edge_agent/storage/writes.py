"""Writes to the state directory that the disk refused, retried until they land.

The agent's state in memory is the truth; `state.json` and `trust/root.json` are its durable
copies. When the disk refuses a write (full, over quota, read-only, an I/O error), the caller
learns it at once as a `StoreError` whose `reason` goes into the event it reports, and the
write is kept under its key and retried with doubling delays (`[updates] write_retry_min_s` to
`write_retry_max_s`). A later write under the same key replaces it; whichever lands first ends
the wait, and `on_landed(key)` is told. All writes go through one lock, so an older copy can
never overwrite a newer one.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
from collections.abc import Awaitable, Callable

from edge_agent.errors import DiskFullError, StoreError

log = logging.getLogger(__name__)

Write = Callable[[], None]  # blocking; run in a worker thread
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def store_error(error: OSError) -> StoreError:
    """The error an update reports for a refused write: `disk_full`, else `store_error`."""
    text = f"{error.filename}: {error.strerror}" if error.filename else str(error)
    if error.errno in _FULL:
        return DiskFullError(f"no space left on the state directory's disk ({text})")
    return StoreError(f"cannot write to the state directory ({text})")


class PendingWrites:
    """Runs state-directory writes and retries the refused ones in one owned task."""

    def __init__(
        self,
        *,
        min_s: float,
        max_s: float,
        on_landed: Callable[[str], Awaitable[None]],
    ) -> None:
        self._min_s, self._max_s = min_s, max_s
        self._on_landed = on_landed
        self._waiting: dict[str, Write] = {}
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def keys(self) -> list[str]:
        """What is waiting to be written, by key."""
        return sorted(self._waiting)

    async def write(self, key: str, write: Write) -> StoreError | None:
        """Write now; if the disk refuses, keep it for the retries and return why."""
        async with self._lock:
            try:
                await asyncio.to_thread(write)
            except OSError as e:
                error = store_error(e)
                if key not in self._waiting:
                    log.error("cannot write %s: %s; retrying until it lands", key, error)
                self._waiting[key] = write
                self._start()
                return error
            landed = self._waiting.pop(key, None) is not None
        if landed:
            await self._landed(key)
        return None

    async def close(self) -> None:
        """Stop retrying (what is waiting stays unwritten) and wait for the task to end."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._retry(), name="state writes")

    async def _retry(self) -> None:
        delay = self._min_s
        while self._waiting:
            await asyncio.sleep(delay)
            landed = [key for key in self.keys if await self._try(key)]
            for key in landed:
                await self._landed(key)
            delay = self._min_s if landed else min(delay * 2, self._max_s)

    async def _try(self, key: str) -> bool:
        async with self._lock:
            write = self._waiting.get(key)
            if write is None:
                return False  # a direct write landed meanwhile and said so
            try:
                await asyncio.to_thread(write)
            except OSError as e:
                log.debug("still cannot write %s: %s", key, e)
                return False
            del self._waiting[key]
        log.info("wrote %s, which the disk had refused", key)
        return True

    async def _landed(self, key: str) -> None:
        try:
            await self._on_landed(key)
        except Exception:  # a listener's failure must not stop the retries of other keys
            log.exception("after writing %s", key)
