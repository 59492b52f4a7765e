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
from dataclasses import replace
from typing import Any

from edge_agent.config.settings import DeviceConfig
from edge_agent.errors import AgentError, ProbationFailedError, UpdateError
from edge_agent.mqtt.link import LinkState
from edge_agent.storage.state import Installed, ModelState, StateStore
from edge_agent.storage.store import ModelStore
from edge_agent.storage.writes import store_error
from edge_agent.update.acquire import Acquisition
from edge_agent.update.activation import Activator
from edge_agent.update.endings import INTERNAL_ERROR, Job, UpdateEndings, reason_of
from edge_agent.update.fetch import ChunkFetcher
from edge_agent.update.ledger import STATE_KEY
from edge_agent.uplink.reporting import Reporter
from edge_common.supervise import watch
from edge_protocol import AssignedModel, Assignment, RejectedError, Release, TrustedState
from edge_protocol.messages import EventKind, UpdatePhase

__all__ = ["INTERNAL_ERROR", "STATE_KEY", "ChunkFetcher", "Job", "Updater"]  # agent.py's names

log = logging.getLogger(__name__)


class Updater(UpdateEndings):
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
        also_kept: Callable[[], set[tuple[str, str]]] = set,
    ) -> None:
        super().__init__(config, trust, states=states, activator=activator, reporter=reporter)
        self._also_kept = also_kept
        self._store = store
        self._acquire = Acquisition(
            config, trust, store=store, reporter=reporter, fetcher=fetcher, subscribe=subscribe,
            set_phase=self._set_phase, link=link, unsubscribe=unsubscribe,
        )  # fmt: skip
        self._jobs: dict[str, Job] = {}
        # A newer assignment naming the release a job is installing: if that job fails, the
        # newer seq has the right to try it again (the job records its failure at its own seq).
        self._renewed: dict[str, tuple[AssignedModel, int]] = {}
        self._waiting: Assignment | None = None  # accepted, but its seq is not on disk yet
        self._uncommitted: set[str] = set()  # passed probation; the commit waits for the disk

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
            await self._fail(name, pinned, seq, kind=EventKind.FAILED, reason=reason_of(error),
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

    # --- helpers ----------------------------------------------------------------------------
    # --- helpers ----------------------------------------------------------------------------

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
