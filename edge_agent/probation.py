"""Probation: after a swap, the new model must serve well before it is committed.

The watcher counts the requests the new version answers. Probation ends after
`probation_requests` answers or `probation_s` seconds, whichever comes first, and fails when
more than `probation_max_error_rate` of them were server errors (5xx): the kind a model causes,
unlike the 4xx a client's own bad input earns.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from edge_agent.config import UpdateSettings
from edge_agent.errors import ProbationFailedError
from edge_agent.server.metrics import AgentMetrics


@dataclass
class ProbationCount:
    """Answers of one model version during its probation."""

    answered: int = 0
    server_errors: int = 0


class ProbationWatcher:
    """Watches one model version until it passes or fails probation."""

    def __init__(
        self, metrics: AgentMetrics, model: str, version: int, settings: UpdateSettings
    ) -> None:
        self._metrics = metrics
        self._model = model
        self._version = str(version)
        self._settings = settings
        self.count = ProbationCount()
        self._enough = asyncio.Event()

    async def watch(self) -> ProbationCount:
        """Wait out probation; raise ProbationFailedError when the error rate is too high."""
        self._metrics.request_listeners.append(self._on_request)
        started = time.monotonic()
        try:
            remaining = self._settings.probation_s
            await asyncio.wait_for(self._enough.wait(), timeout=remaining)
        except TimeoutError:
            pass  # the time limit ends probation as well as the request count does
        finally:
            self._metrics.request_listeners.remove(self._on_request)
        self._judge(time.monotonic() - started)
        return self.count

    def _on_request(self, model: str, version: str, status: int) -> None:
        if model != self._model or version != self._version:
            return
        self.count.answered += 1
        if status >= 500:
            self.count.server_errors += 1
        if self.count.answered >= self._settings.probation_requests:
            self._enough.set()

    def _judge(self, elapsed_s: float) -> None:
        answered, errors = self.count.answered, self.count.server_errors
        if answered and errors / answered > self._settings.probation_max_error_rate:
            raise ProbationFailedError(
                f"{errors} of {answered} requests failed in {elapsed_s:.0f} s of probation "
                f"(limit {self._settings.probation_max_error_rate:.0%})"
            )
