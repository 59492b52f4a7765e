"""The update state machine of docs/protocol.md section 5, one task per model.

assignment -> release fetched and verified -> chunks downloaded and verified (resumable) ->
artifact verified -> load and warm up -> self-test -> atomic swap -> probation -> committed, or
rolled back to the previous model. Every step has a deadline; every ending is an event. The
model that was serving keeps serving through all of it, whatever goes wrong.

The state in memory is the truth and `state.json` its durable copy: a write the disk refuses
(`edge_agent.storage.writes`) ends the step with its reason (`disk_full`) and is retried until
it lands.
What each step does then is the table in docs/agent.md, "When the disk refuses a write".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any

from edge_agent.config.settings import DeviceConfig
from edge_agent.errors import AgentError, ProbationFailedError, StoreError, UpdateError
from edge_agent.mqtt.link import LinkState
from edge_agent.storage.state import AgentState, Installed, ModelState, StateStore
from edge_agent.storage.store import ModelStore
from edge_agent.storage.writes import PendingWrites, Write, store_error
from edge_agent.update.acquire import Acquisition
from edge_agent.update.activation import Activator
from edge_agent.update.fetch import ChunkFetcher
from edge_agent.uplink.reporting import Reporter
from edge_common.supervise import watch
from edge_protocol import AssignedModel, Assignment, RejectedError, Release, TrustedState
from edge_protocol.messages import EventKind, UpdatePhase

__all__ = ["INTERNAL_ERROR", "STATE_KEY", "ChunkFetcher", "Job", "Updater"]  # agent.py's names

log = logging.getLogger(__name__)
STATE_KEY = "state.json"  # the key of state.json's writes in PendingWrites
INTERNAL_ERROR = "internal_error"  # the reason of an update ended by a bug of the agent


@dataclass(frozen=True)
class Job:
    """One model's update in progress."""

    model: str
    target: Installed
    seq: int
    task: asyncio.Task[None]


class Updater:
    """Turns verified assignments into installed, self-tested, probated models."""

    def __init__(
        self,
        config: DeviceConfig,
        trust: TrustedState,
        *,
        states: StateStore,
        store: ModelStore,
        activator: Activator,
        reporter: Reporter,
        fetcher: ChunkFetcher,
        subscribe: Callable[[str], Coroutine[Any, Any, None]],
        link: LinkState | None = None,
        unsubscribe: Callable[[str], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self._config = config
        # The last accepted assignment's seq and digest belong to `trust`, which moves them as
        # it verifies; state.json's copy is stamped from it at every write (`_write_state`).
        self._trust = trust
        self._states = states
        self.state = states.load()
        self._persisted = self.state  # what state.json holds: retention keeps its models too
        self._store = store
        self._activator = activator
        self._reporter = reporter
        self._acquire = Acquisition(
            config, trust, store=store, reporter=reporter, fetcher=fetcher, subscribe=subscribe,
            set_phase=self._set_phase, link=link, unsubscribe=unsubscribe,
        )  # fmt: skip
        self._jobs: dict[str, Job] = {}
        # A newer assignment naming the release a job is installing: if that job fails, the
        # newer seq has the right to try it again (the job records its failure at its own seq).
        self._renewed: dict[str, tuple[AssignedModel, int]] = {}
        settings = config.updates
        self.writes = PendingWrites(
            min_s=settings.write_retry_min_s, max_s=settings.write_retry_max_s,
            on_landed=self._landed,
        )  # fmt: skip
        self._waiting: Assignment | None = None  # accepted, but its seq is not on disk yet
        self._uncommitted: set[str] = set()  # passed probation; the commit waits for the disk
        self._phases: dict[str, UpdatePhase] = {}
        self._last_errors: dict[str, str | None] = {}

    @property
    def pending_writes(self) -> list[str]:
        """The state files the disk refused and that are being retried."""
        return self.writes.keys

    def phase(self, name: str) -> UpdatePhase:
        """Where the update of `name` stands (idle when none ever ran)."""
        return self._phases.get(name, UpdatePhase.IDLE)

    def describe(self) -> dict[str, dict[str, Any]]:
        """Each model's part of the state message: active, previous, phase and last error."""
        models: dict[str, dict[str, Any]] = {}
        for name in sorted({*self.state.models, *self._phases}):
            model_state = self.state.model(name)
            models[name] = {
                "active": model_state.active.to_dict() if model_state.active else None,
                "previous": model_state.previous.to_dict() if model_state.previous else None,
                "phase": self.phase(name),
                "last_error": self._last_errors.get(name),
            }
        return models

    # --- start-up ---------------------------------------------------------------------------

    async def serve_installed(self) -> None:
        """Serve every committed model from the store, before anything else (offline start).

        A model whose probation was cut short by a restart gets its probation again, unless
        restarts keep interrupting it: then it is presumed to crash the agent and rolled back.
        """
        for name, model_state in sorted(self.state.models.items()):
            if model_state.active is None:
                continue
            if model_state.in_probation:
                await self._resume_probation(name, model_state)
            elif not await self._activator.serve_installed(name, model_state.active):
                await self._fall_back(name, model_state)

    async def _resume_probation(self, name: str, model_state: ModelState) -> None:
        active = model_state.active
        assert active is not None  # noqa: S101 - the caller checked
        # A stop that was asked for (SIGTERM) is not counted: only ends the agent did not choose.
        restarts = model_state.probation_restarts + (0 if model_state.probation_clean_stop else 1)
        if restarts > self._config.updates.max_probation_restarts:
            error = ProbationFailedError(f"the agent restarted {restarts} times during probation")
            await self._roll_back(name, active, error)
            return
        resumed = replace(model_state, probation_restarts=restarts, probation_clean_stop=False)
        refused = await self._save(name, resumed)
        if refused is not None:  # an uncounted restart could loop forever: do not risk it
            await self._roll_back(name, active, refused)
            return
        if not await self._activator.serve_installed(name, active):
            await self._fall_back(name, model_state)
            return
        work = self._probate(name, active)
        task = asyncio.create_task(
            self._guarded(name, active.version, work), name=f"probation {name}"
        )
        self._track(Job(name, active, self._trust.assignment_seq, task))

    async def _fall_back(self, name: str, model_state: ModelState) -> None:
        previous = model_state.previous
        if previous is not None and await self._activator.serve_installed(name, previous):
            await self._save(name, ModelState(active=previous, failed=model_state.failed))
            return
        await self._save(name, ModelState(failed=model_state.failed))

    # --- inputs ---------------------------------------------------------------------------

    async def accept(self, assignment: Assignment) -> None:
        """Record the assignment the trust just verified, then act on it (protocol.md 5.3).

        Nothing is acted on before its seq is on disk. When the disk refuses it, every model
        the assignment changes reports `failed` with the reason, and the assignment waits: it
        is applied when the write lands (a newer assignment takes its place).
        """
        on_disk = (self._persisted.assignment_seq, self._persisted.assignment_digest)
        unsaved = self._mark() != on_disk
        if unsaved or STATE_KEY in self.writes.keys:
            self._waiting = None  # replaced, whatever happens next
            refused = await self._write_state()
            if refused is not None:
                self._waiting = assignment
                await self._report_waiting(assignment, refused)
                return
        self.apply(assignment)

    def apply(self, assignment: Assignment) -> None:
        """Start (or keep) an update task for every followed model the assignment changes."""
        for name, pinned in assignment.models.items():
            if self._config.follows(name):
                self._consider(name, pinned, assignment.seq)

    def on_release(self, model: str, version: int, payload: bytes) -> None:
        """Hand a release document from the broker to the task waiting for it."""
        self._acquire.on_release(model, version, payload)

    async def close(self, *, clean: bool = False) -> None:
        """Cancel every update task and the write retries, and wait for them to unwind.

        `clean`: the stop was asked for (SIGTERM); a probation it interrupts is marked so, and
        the next start resumes it without counting a restart against `max_probation_restarts`.
        """
        jobs = list(self._jobs.values())
        for job in jobs:
            job.task.cancel()
        for job in jobs:
            with contextlib.suppress(asyncio.CancelledError):
                await job.task
        if clean:
            await self._mark_clean_stop()
        await self.writes.close()

    async def _mark_clean_stop(self) -> None:
        models = self.state.models
        stopped = {name: replace(m, probation_clean_stop=True)
                   for name, m in models.items() if m.in_probation}  # fmt: skip
        if stopped:
            self.state = replace(self.state, models={**models, **stopped})
            await self._write_state()  # refused: the next start counts a restart, as before

    def _changes(self, name: str, pinned: AssignedModel) -> bool:
        """Whether an assignment pinning `pinned` would start an update of `name`."""
        target = Installed(pinned.version, pinned.sha256)
        running = self._jobs.get(name)
        if running is not None:
            return running.target != target
        return self._config.follows(name) and self.state.model(name).active != target

    def _consider(self, name: str, pinned: AssignedModel, seq: int) -> None:
        target = Installed(pinned.version, pinned.sha256)
        running = self._jobs.get(name)
        if running is not None and running.target == target and seq > running.seq:
            self._renewed[name] = (pinned, seq)
        if not self._changes(name, pinned):
            return
        failed_seq = self.state.model(name).failed_at(target)
        if failed_seq is not None and failed_seq >= seq:
            log.info(
                "%s v%d failed here before; waiting for a newer assignment", name, target.version
            )
            return
        if running is not None:
            running.task.cancel()
        self._renewed.pop(name, None)
        work = self._run(name, pinned, seq)
        task = asyncio.create_task(self._guarded(name, pinned.version, work), name=f"update {name}")
        self._track(Job(name, target, seq, task))

    def _track(self, job: Job) -> None:
        self._jobs[job.model] = job
        watch(job.task)  # a job that cannot even record its own failure ends the agent

        def forget(task: asyncio.Task[None]) -> None:
            if self._jobs.get(job.model) is job:
                del self._jobs[job.model]
                renewed = self._renewed.pop(job.model, None)
                if renewed is not None and not task.cancelled():
                    self._consider(job.model, *renewed)  # tried again if it failed meanwhile

        job.task.add_done_callback(forget)

    # --- the state machine ------------------------------------------------------------------

    async def _guarded(self, name: str, version: int, work: Coroutine[Any, Any, None]) -> None:
        """Run one update task; a bug in it ends the update reported, never the task silently."""
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("the update of %s v%d failed unexpectedly", name, version)
            await self._end(
                name, version, kind=EventKind.FAILED, reason=INTERNAL_ERROR, detail=repr(e)
            )

    async def _run(self, name: str, pinned: AssignedModel, seq: int) -> None:
        version = pinned.version
        try:
            await self._reporter.event(EventKind.RECEIVED, model=name, version=version, seq=seq)
            release, envelope = await self._acquire.release(name, pinned)
            await self._reporter.event(EventKind.VERIFIED, model=name, version=version, seq=seq)
            path = await self._acquire.model_file(name, release)
            await self._set_phase(name, UpdatePhase.LOADING)
            deadline_s = self._config.updates.activation_timeout_s
            await self._activator.activate(name, release, envelope, path, deadline_s)
        except asyncio.CancelledError:
            raise
        except RejectedError as e:
            await self._fail(
                name, pinned, seq, kind=EventKind.REJECTED, reason=e.reason, detail=str(e)
            )
            return
        except (AgentError, OSError) as e:
            error = store_error(e) if isinstance(e, OSError) else e
            await self._fail(name, pinned, seq, kind=EventKind.FAILED, reason=_reason(error),
                             detail=str(error))  # fmt: skip
            return
        except Exception as e:  # a defect: fail this release here rather than retry it forever
            log.exception("%s v%d: unexpected error", name, version)
            detail = f"{type(e).__name__}: {e}"
            await self._fail(
                name, pinned, seq, kind=EventKind.FAILED, reason=INTERNAL_ERROR, detail=detail
            )
            return
        await self._start_probation(name, release)

    async def _start_probation(self, name: str, release: Release) -> None:
        model_state = self.state.model(name)
        target = Installed(release.version, release.artifact.sha256)
        probation = ModelState(active=target, previous=model_state.active, in_probation=True,
                               failed=model_state.failed)  # fmt: skip
        refused = await self._save(name, probation)
        if refused is not None:  # a probation state.json does not know of: do not run it
            await self._roll_back(name, target, refused)
            return
        await self._reporter.event(EventKind.ACTIVATED, model=name, version=release.version)
        await self._probate(name, target)

    async def _probate(self, name: str, target: Installed) -> None:
        await self._set_phase(name, UpdatePhase.PROBATION)
        previous = self.state.model(name).previous
        before = previous.version if previous is not None else None
        try:
            await self._activator.probation(name, target.version, before)
        except UpdateError as e:
            await self._roll_back(name, target, e)
            return
        committed = replace(self.state.model(name), in_probation=False, probation_restarts=0)
        self._uncommitted.add(name)  # before the write: its retry may land at any await
        refused = await self._save(name, committed)
        if refused is not None:
            await self._commit_waits(name, target, refused)
            return
        self._uncommitted.discard(name)
        await self._set_phase(name, UpdatePhase.IDLE)
        await self._retain(finished=name)

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
            EventKind.ROLLED_BACK, model=name, version=failed.version, reason=_reason(error),
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
            name, failed.version, kind=EventKind.FAILED, reason=_reason(error), detail=detail
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

    # --- helpers ----------------------------------------------------------------------------

    async def _save(self, name: str, model_state: ModelState) -> StoreError | None:
        """Change one model's state and write it; None, or why the disk refused (retried)."""
        self.state = self.state.with_model(name, model_state)
        refused = await self._write_state()
        await self._reporter.publish_state()
        return refused

    async def _write_state(self) -> StoreError | None:
        seq, digest = self._mark()
        self.state = replace(self.state, assignment_seq=seq, assignment_digest=digest)
        return await self.writes.write(STATE_KEY, self._state_write(self.state))

    def _mark(self) -> tuple[int, str | None]:
        """The last accepted assignment's (seq, digest), as the trust holds them."""
        return self._trust.assignment_seq, self._trust.assignment_digest

    def _state_write(self, state: AgentState) -> Write:
        def write() -> None:
            self._states.save(state)
            self._persisted = state

        return write

    async def _landed(self, key: str) -> None:
        """A refused write of state.json landed: finish the commits and apply what waited."""
        if key != STATE_KEY:
            return
        for name in sorted(self._uncommitted):
            if self.phase(name) == UpdatePhase.FAILED and not self.state.model(name).in_probation:
                log.info("%s: the commit is on disk", name)
                await self._set_phase(name, UpdatePhase.IDLE)
        self._uncommitted.clear()
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            log.info("assignment %d is on disk: applying it", waiting.seq)
            self.apply(waiting)

    async def _set_phase(self, name: str, phase: UpdatePhase) -> None:
        self._phases[name] = phase
        self._activator.metrics.set_update_state(name, phase)
        await self._reporter.publish_state()

    async def _retain(self, finished: str | None = None) -> None:
        # Keep what the state (in memory and on disk) refers to and what other updates are
        # fetching; the update that just ended (`finished`) keeps nothing it did not install.
        running = {(job.model, job.target.sha256) for job in self._jobs.values()
                   if job.model != finished}  # fmt: skip
        others = {sha256 for _model, sha256 in running}
        keep = self.state.installed_shas() | self._persisted.installed_shas() | others
        releases = self.state.installed_releases() | self._persisted.installed_releases() | running
        try:
            await asyncio.to_thread(self._store.retain, keep)
            # A removed model's signed release goes with it (its job may be saving one now).
            await asyncio.to_thread(self._states.retain_releases, releases)
        except OSError as e:  # what is not deleted now is deleted after the next update
            log.error("cannot remove unused model files: %s", e)


def _reason(error: Exception) -> str:
    reason = getattr(error, "reason", None)
    return reason if isinstance(reason, str) else "failed"
