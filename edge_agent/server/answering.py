"""Whether the server is answering inference requests, and a wait for the moment it is not.

A shadow runs only once the server has answered nothing for `QUIET_S` (docs/agent.md). A
request pays for this with a counter and, when it is the last to finish, one clock reading;
nothing else. The waiting shadow looks again every `LOOK_AGAIN_S`: a look every millisecond
cost a small device several percent of its core (about 80 µs a wake-up measured on a 2-core
VM, 7% of a core at 1 kHz), and a timer that the last answer starts and the next request
cancels cost every request about 5 µs of the loop's time at concurrency 1 (profiled). Looking
every 10 ms costs under 1% of a core, only while a shadow waits, and delays a shadow's batch by
at most that, next to the 50 ms it may already wait to gather its inputs. All of this happens
on the event loop's thread: requests begin and end there.
"""

from __future__ import annotations

import asyncio
import time

# More than the gap between an answer and the next request of a client that sends them back
# to back: under a steady load the quiet moment never comes, and the shadow keeps out.
QUIET_S = 0.001
LOOK_AGAIN_S = 0.01  # how often a waiting shadow looks for the quiet moment


class Answering:
    """Counts the requests being answered (each from its decoding to its answer)."""

    def __init__(self, quiet_s: float = QUIET_S, look_again_s: float = LOOK_AGAIN_S) -> None:
        self.quiet_s = quiet_s
        self.look_again_s = look_again_s
        self._count = 0
        self._quiet_from = 0.0  # perf_counter() when the last one was answered

    def begin(self) -> None:
        """A request is being answered (`end` when it is, or failed)."""
        self._count += 1

    def end(self) -> None:
        """The request is answered."""
        self._count -= 1
        if not self._count:
            self._quiet_from = time.perf_counter()

    def busy(self) -> bool:
        """Whether a request is being answered, or was less than `quiet_s` ago."""
        return bool(self._count) or time.perf_counter() - self._quiet_from < self.quiet_s

    async def quiet(self) -> None:
        """Return at a moment no request has been answered for `quiet_s`."""
        while self.busy():
            if self._count:
                await asyncio.sleep(self.look_again_s)
            else:  # a quiet moment has begun: look again as it ends, not later
                remaining = self._quiet_from + self.quiet_s - time.perf_counter()
                await asyncio.sleep(max(min(remaining, self.look_again_s), 0.0))
