"""Whether the server is answering inference requests, and a wait for the moment it is not.

A shadow runs only once the server has answered nothing for `QUIET_S` (docs/agent.md). It
waits for that moment here without polling: a loop woken every millisecond to look costs a
small device several percent of its core (about 80 µs a wake-up measured on a 2-core VM,
7% of a core at 1 kHz), which is more than the shadow itself under light load. Instead, the
last request to finish starts one timer of `QUIET_S` while a shadow waits, and the next
request to begin cancels it; a cancelled timer never wakes the loop. All of this happens on
the event loop's thread: requests begin and end there.
"""

from __future__ import annotations

import asyncio
import time

# More than the gap between an answer and the next request of a client that sends them back
# to back: under a steady load the quiet moment never comes, and the shadow keeps out.
QUIET_S = 0.001


class Answering:
    """Counts the requests being answered (each from its decoding to its answer)."""

    def __init__(self, quiet_s: float = QUIET_S) -> None:
        self.quiet_s = quiet_s
        self._count = 0
        self._quiet_from = 0.0  # perf_counter() when the last one was answered
        self._waiters: list[asyncio.Future[None]] = []
        self._timer: asyncio.TimerHandle | None = None

    def begin(self) -> None:
        """A request is being answered (`end` when it is, or failed)."""
        self._count += 1
        if self._timer is not None:  # the quiet moment a shadow waited for is over
            self._timer.cancel()
            self._timer = None

    def end(self) -> None:
        """The request is answered."""
        self._count -= 1
        if not self._count:
            self._quiet_from = time.perf_counter()
            if self._waiters:
                self._arm(self.quiet_s)

    def busy(self) -> bool:
        """Whether a request is being answered, or was less than `quiet_s` ago."""
        return bool(self._count) or time.perf_counter() - self._quiet_from < self.quiet_s

    async def quiet(self) -> None:
        """Return at a moment no request has been answered for `quiet_s`."""
        while self.busy():
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            if not self._count:  # a quiet moment has begun: it ends when `quiet_s` is over
                self._arm(self._quiet_from + self.quiet_s - time.perf_counter())
            try:
                await waiter
            finally:
                if waiter in self._waiters:  # cancelled while waiting
                    self._waiters.remove(waiter)

    def _arm(self, delay: float) -> None:
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(max(delay, 0.0), self._wake)

    def _wake(self) -> None:
        self._timer = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
