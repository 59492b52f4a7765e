"""How an update ends: committed later, rolled back, kept serving as failed, or failed.

Every ending is recorded in the state (a failure at its seq, so the same release is not tried
again until a newer assignment) and reported as an event; then the update's leftovers go
(`_retain`). `Updater` (updater.py) is the state machine that reaches these endings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from edge_agent.errors import AgentError, StoreError
from edge_agent.storage.state import Installed, ModelState
from edge_agent.storage.store import ModelStore
from edge_agent.update.ledger import UpdateLedger
from edge_protocol import AssignedModel, Assignment
from edge_protocol.messages import EventKind, UpdatePhase

log = logging.getLogger(__name__)

INTERNAL_ERROR = "internal_error"  # the reason of an update ended by a bug of the agent


@dataclass(frozen=True)
class Job:
    """One model's update in progress."""

    model: str
    target: Installed
    seq: int
    task: asyncio.Task[None]


class UpdateEndings(UpdateLedger):
    """The endings of the state machine, on the ledger they record into."""

    _store: ModelStore
    _jobs: dict[str, Job]
    _uncommitted: set[str]  # passed probation; the commit waits for the disk
    # (model, sha256) of other files to keep: the candidates of running experiments.
    _also_kept: Callable[[], set[tuple[str, str]]]

    def _changes(self, name: str, pinned: AssignedModel) -> bool:
        """Whether an assignment pinning `pinned` would start an update of `name`."""
        raise NotImplementedError

    async def _commit_waits(self, name: str, target: Installed, refused: StoreError) -> None:
        """Passed probation, serving, not yet committed on disk: report it; the retry commits."""
        detail = (
            f"v{target.version} passed probation and keeps serving, but its commit could not "
            f"be written ({refused}); retrying until it lands"
        )
        self._last_errors[name] = detail
        await self._reporter.event(
            EventKind.FAILED,
            model=name,
            version=target.version,
            reason=refused.reason,
            detail=detail,
        )
        await self._set_phase(name, UpdatePhase.FAILED)
        if name not in self._uncommitted:  # the commit landed while this was reported
            await self._set_phase(name, UpdatePhase.IDLE)
        await self._retain(finished=name)

    async def _roll_back(self, name: str, failed: Installed, error: AgentError) -> None:
        model_state = self.state.model(name)
        previous = model_state.previous
        if previous is not None and not await self._activator.serve_installed(name, previous):
            previous = None  # its file is damaged too
        if previous is None:  # a device never serves nothing because probation failed
            await self._keep_serving(name, failed, error)
            return
        failures = {
            **model_state.failed,
            (failed.version, failed.sha256): self._trust.assignment_seq,
        }
        await self._save(name, ModelState(active=previous, failed=failures))
        self._last_errors[name] = str(error)
        await self._reporter.event(
            EventKind.ROLLED_BACK, model=name, version=failed.version, reason=reason_of(error),
            detail=str(error), to_version=previous.version,
        )  # fmt: skip
        await self._set_phase(name, UpdatePhase.IDLE)
        await self._retain(finished=name)

    async def _keep_serving(self, name: str, failed: Installed, error: AgentError) -> None:
        """No earlier version to return to: the one that failed keeps serving, as `failed`."""
        model_state = self.state.model(name)
        failures = {
            **model_state.failed,
            (failed.version, failed.sha256): self._trust.assignment_seq,
        }
        repository = self._activator.repository
        served = name in repository and repository.get(name).version == failed.version
        if not served and not await self._activator.serve_installed(name, failed):
            await self._save(name, ModelState(failed=failures))  # its file is gone: nothing is left
        else:
            await self._save(name, ModelState(active=failed, failed=failures))
        detail = (
            f"{error}; there is no earlier version to roll back to, "
            f"so v{failed.version} keeps serving"
        )
        await self._end(
            name, failed.version, kind=EventKind.FAILED, reason=reason_of(error), detail=detail
        )

    async def _fail(
        self,
        name: str,
        pinned: AssignedModel,
        seq: int,
        *,
        kind: EventKind,
        reason: str,
        detail: str,
    ) -> None:
        model_state = self.state.model(name)
        failures = {**model_state.failed, (pinned.version, pinned.sha256): seq}
        await self._save(name, replace(model_state, failed=failures))
        await self._end(name, pinned.version, kind=kind, reason=reason, detail=detail, seq=seq)

    async def _end(
        self, name: str, version: int, *, kind: EventKind, reason: str, detail: str, **extra: Any
    ) -> None:
        """Report an update that ended without a model to probate."""
        log.warning("%s v%d %s: %s", name, version, kind, detail)
        self._last_errors[name] = detail
        await self._reporter.event(
            kind, model=name, version=version, reason=reason, detail=detail, **extra
        )
        await self._set_phase(name, UpdatePhase.FAILED)
        await self._retain(finished=name)

    async def _report_waiting(self, assignment: Assignment, refused: StoreError) -> None:
        detail = f"assignment {assignment.seq} cannot be recorded ({refused}); applied once it is"
        for name, pinned in sorted(assignment.models.items()):
            if not self._changes(name, pinned):
                continue
            log.warning("%s v%d waits: %s", name, pinned.version, detail)
            self._last_errors[name] = detail
            await self._reporter.event(
                EventKind.FAILED, model=name, version=pinned.version, reason=refused.reason,
                detail=detail, seq=assignment.seq,
            )  # fmt: skip
            # An update under way keeps its own phase; one that is only tidying up is idle.
            if name not in self._jobs or self.phase(name) == UpdatePhase.IDLE:
                await self._set_phase(name, UpdatePhase.FAILED)

    async def _retain(self, finished: str | None = None) -> None:
        # Keep what the state (in memory and on disk) refers to, what other updates are
        # fetching and what experiments run (kept for their restart); the update that just
        # ended (`finished`) keeps nothing it did not install.
        running = {(job.model, job.target.sha256) for job in self._jobs.values()
                   if job.model != finished} | self._also_kept()  # fmt: skip
        others = {sha256 for _model, sha256 in running}
        keep = self.state.installed_shas() | self._persisted.installed_shas() | others
        releases = self.state.installed_releases() | self._persisted.installed_releases() | running
        try:
            await asyncio.to_thread(self._store.retain, keep)
            # A removed model's signed release goes with it (its job may be saving one now).
            await asyncio.to_thread(self._states.retain_releases, releases)
        except OSError as e:  # what is not deleted now is deleted after the next update
            log.error("cannot remove unused model files: %s", e)


def reason_of(error: Exception) -> str:
    reason = getattr(error, "reason", None)
    return reason if isinstance(reason, str) else "failed"
