"""Events and telemetry the spool could not keep (its disk is full), held in memory.

The spool is on the state directory's disk; when that disk refuses the write, the message
would be lost although the broker may be reachable. The reporter keeps such messages here and
sends them with the spooled ones, in msg_seq order. The outbox is bounded (`MAX_MESSAGES`,
`MAX_BYTES`): when full, the oldest telemetry goes first, then the oldest events. It does not
survive a restart; the spool's `dropped_*` counters have already counted these messages.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Iterable

from edge_agent.uplink.spool import KIND_TELEMETRY, SpoolRecord

log = logging.getLogger(__name__)

MAX_MESSAGES = 64
MAX_BYTES = 1024 * 1024


class Outbox:
    """A bounded list of unspooled messages, oldest (lowest msg_seq) first."""

    def __init__(self, max_messages: int = MAX_MESSAGES, max_bytes: int = MAX_BYTES) -> None:
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._records: list[SpoolRecord] = []
        self._bytes = 0
        self.dropped = 0  # messages given up for the bounds, since start

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: SpoolRecord) -> None:
        """Keep `record` (unnumbered ones, msg_seq 0, go first), dropping the oldest if full."""
        seqs = [r.seq for r in self._records]
        self._records.insert(bisect.bisect_right(seqs, record.seq), record)
        self._bytes += len(record.payload)
        while self._records and (
            len(self._records) > self._max_messages or self._bytes > self._max_bytes
        ):
            self._drop_one()

    def take(self, below: int | None = None) -> list[SpoolRecord]:
        """Remove and return the records (all, or those numbered below `below`), in order."""
        if below is None:
            taken, self._records = self._records, []
        else:
            taken = [r for r in self._records if r.seq < below]
            self._records = [r for r in self._records if r.seq >= below]
        self._bytes -= sum(len(r.payload) for r in taken)
        return taken

    def put_back(self, records: Iterable[SpoolRecord]) -> None:
        """Return records that were not sent, to be sent again."""
        for record in records:
            self.add(record)

    def _drop_one(self) -> None:
        kinds = [r.kind for r in self._records]
        index = kinds.index(KIND_TELEMETRY) if KIND_TELEMETRY in kinds else 0
        victim = self._records.pop(index)
        self._bytes -= len(victim.payload)
        self.dropped += 1
        log.warning("dropped unspooled %s message %d: too many waiting", victim.kind, victim.seq)
