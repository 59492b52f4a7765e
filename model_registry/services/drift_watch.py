"""The drift duty: judge every model's drift periodically, record each change of status.

One registry at a time runs it (`Storage.acquire_duty("drift")`). Each pass takes the last
`[drift] window_s` of every model, per device and fleet-wide (`services.drift.drift_rows`),
compares each feature's status with the latest one recorded, and stores a `drift_alert` record
where it rose (ok < warn < alert) and a `drift_cleared` record where it fell. A window with
too few values keeps the status it had. The pass also keeps the fleet-wide numbers for the
`/metrics` gauges of this registry.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta

from edge_protocol.trust import Clock
from model_registry.config import DriftConfig
from model_registry.services.drift import (
    INSUFFICIENT,
    OK,
    SEVERITY,
    DriftLimits,
    FeatureDrift,
    ProfileBook,
    drift_rows,
)
from model_registry.services.duties import duty_loop
from model_registry.storage import DriftRecord, Storage

log = logging.getLogger(__name__)

DUTY = "drift"
RISEN = "drift_alert"
CLEARED = "drift_cleared"


class DriftWatch:
    """Runs the drift passes and keeps what the metrics show."""

    def __init__(self, storage: Storage, config: DriftConfig, clock: Clock) -> None:
        self._storage = storage
        self._config = config
        self._clock = clock
        self._profiles = ProfileBook(storage)
        self.ignored: Counter[str] = Counter()  # drift fields left out, by reason
        self.fleet: dict[tuple[str, int, str], FeatureDrift] = {}  # (model, version, feature)
        self._counted_until: datetime | None = None  # points up to here were counted

    async def run(self) -> None:
        """The duty loop, until cancelled."""
        await duty_loop(self._storage, DUTY, self.run_pass, self._config.interval_s)

    async def run_pass(self) -> None:
        """One pass of the duty."""
        await self.judge()

    async def judge(self) -> list[DriftRecord]:
        """Judge every model once; store and return the records of what changed."""
        config, storage = self._config, self._storage
        now = self._clock()
        limits = DriftLimits.from_config(config)
        fleet: dict[tuple[str, int, str], FeatureDrift] = {}
        changes: list[DriftRecord] = []
        for summary in await storage.models():
            rows = await drift_rows(
                storage, summary.name, now - timedelta(seconds=config.window_s), limits,
                profiles=self._profiles, ignored=self.ignored, count_after=self._counted_until,
            )  # fmt: skip
            known = {
                (r.version, r.device_id or "", r.feature): r.status
                for r in await storage.drift_statuses(summary.name)
            }
            for row in rows:
                if row.device_id is None:
                    fleet[(row.model, row.version, row.feature)] = row
                before = known.get(row.key, OK)
                if row.status not in (INSUFFICIENT, before):
                    changes.append(_record(row, before, now))
        self._counted_until = now
        self.fleet = fleet
        if changes:
            await storage.add_drift_records(changes)
            for change in changes:
                log.log(
                    logging.WARNING if change.kind == RISEN else logging.INFO,
                    "drift of %s v%d %s on %s: %s -> %s (PSI %.3f over %d values)",
                    change.model, change.version, change.feature,
                    change.device_id or "the fleet", change.previous, change.status,
                    change.psi or 0.0, change.samples,
                )  # fmt: skip
        return changes


def _record(row: FeatureDrift, before: str, now: datetime) -> DriftRecord:
    kind = RISEN if SEVERITY[row.status] > SEVERITY[before] else CLEARED
    return DriftRecord(
        model=row.model, version=row.version, device_id=row.device_id, feature=row.feature,
        kind=kind, status=row.status, previous=before, at=now, psi=row.psi,
        max_cdf_gap=row.max_cdf_gap, samples=row.samples,
    )  # fmt: skip
