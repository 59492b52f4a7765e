"""Whether the agent has a broker connection, and a clock that runs only while it has one.

Update deadlines that wait on the broker (a release to arrive, a download to progress) count
connected time: an hour without network pauses them for an hour instead of failing the update,
which would then not be tried again until a newer assignment (docs/agent.md, "Lost links").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class LinkState:
    """The broker link as the update code sees it: up or down, and which connection it is."""

    def __init__(self, *, up: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.up = up
        self.epoch = 0  # one more for every connection
        self.session_present = False  # whether the broker kept our session on the last connect
        self._connected_s = 0.0  # connected time before the current connection
        self._up_since = clock() if up else 0.0
        self._listeners: list[Callable[[], None]] = []
        self._changed = asyncio.Event()

    def connected(self, *, session_present: bool) -> None:
        """A new connection is up (its subscriptions are in place)."""
        if not self.up:
            self._up_since = self._clock()
        self.up = True
        self.epoch += 1
        self.session_present = session_present
        self._notify()

    def disconnected(self) -> None:
        """The connection ended."""
        if self.up:
            self._connected_s += self._clock() - self._up_since
        self.up = False
        self._notify()

    def connected_time(self) -> float:
        """Seconds spent connected since this object was made (only ever grows)."""
        current = self._clock() - self._up_since if self.up else 0.0
        return self._connected_s + current

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call `listener()` (on the loop, never awaited) at every change."""
        self._listeners.append(listener)

    async def wait_for(self, future: asyncio.Future[T], budget_s: float) -> T:
        """Await `future`; TimeoutError once `budget_s` seconds of connected time went by."""
        start = self.connected_time()
        while not future.done():
            remaining = budget_s - (self.connected_time() - start)
            if remaining <= 0:
                raise TimeoutError
            changed = asyncio.ensure_future(self._changed.wait())
            try:
                await asyncio.wait(
                    (future, changed), timeout=remaining if self.up else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )  # fmt: skip
            finally:
                changed.cancel()
        return future.result()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()
        for listener in self._listeners:
            listener()
