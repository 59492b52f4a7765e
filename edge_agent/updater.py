"""The update state machine of docs/protocol.md section 5, one task per model.

assignment -> release fetched and verified -> chunks downloaded and verified (resumable) ->
artifact verified -> load and warm up -> self-test -> atomic swap -> probation -> committed, or
rolled back to the previous model. Every step has a deadline; every ending is an event. The
model that was serving keeps serving through all of it, whatever goes wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, Protocol

from edge_agent.activation import Activator
from edge_agent.config import DeviceConfig
from edge_agent.errors import AgentError, ProbationFailedError, StepTimeoutError, UpdateError
from edge_agent.link import LinkState
from edge_agent.reporting import Reporter
from edge_agent.state import Installed, ModelState, StateStore
from edge_agent.store import ModelStore, PartialDownload
from edge_protocol import AssignedModel, Assignment, RejectedError, Release, Topics, TrustedState

log = logging.getLogger(__name__)


class ChunkFetcher(Protocol):
    """Fills a partial download from some transport."""

    async def fetch(
        self, download: PartialDownload, progress: Callable[[int, int], None] | None = None
    ) -> int:
        """Fetch every missing chunk; return how many were written."""


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
        self._topics = Topics(config.mqtt.topic_prefix)
        self._trust = trust
        self._states = states
        self.state = states.load()
        self._store = store
        self._activator = activator
        self._reporter = reporter
        self._fetcher = fetcher
        self._subscribe = subscribe
        self._link = link if link is not None else LinkState()  # deadlines count connected time
        self._unsubscribe = unsubscribe
        self._jobs: dict[str, Job] = {}
        self._releases: dict[tuple[str, int], asyncio.Future[bytes]] = {}
        self.phases: dict[str, str] = {}
        self.last_errors: dict[str, str | None] = {}

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
        restarts = model_state.probation_restarts + 1
        if restarts > self._config.updates.max_probation_restarts:
            error = ProbationFailedError(f"the agent restarted {restarts} times during probation")
            await self._roll_back(name, active, error)
            return
        await self._save(name, replace(model_state, probation_restarts=restarts))
        if not await self._activator.serve_installed(name, active):
            await self._fall_back(name, model_state)
            return
        task = asyncio.create_task(self._probate(name, active), name=f"probation {name}")
        self._track(Job(name, active, self.state.assignment_seq, task))

    async def _fall_back(self, name: str, model_state: ModelState) -> None:
        previous = model_state.previous
        if previous is not None and await self._activator.serve_installed(name, previous):
            await self._save(name, ModelState(active=previous, failed=model_state.failed))
            return
        await self._save(name, ModelState(failed=model_state.failed))

    # --- inputs ---------------------------------------------------------------------------

    def apply(self, assignment: Assignment) -> None:
        """Start (or keep) an update task for every followed model the assignment changes."""
        for name, pinned in assignment.models.items():
            if self._config.follows(name):
                self._consider(name, pinned, assignment.seq)

    def on_release(self, model: str, version: int, payload: bytes) -> None:
        """Hand a release document from the broker to the task waiting for it."""
        waiter = self._releases.get((model, version))
        if waiter is not None and not waiter.done() and payload:
            waiter.set_result(payload)

    async def close(self) -> None:
        """Cancel every update task and wait for them to unwind."""
        jobs = list(self._jobs.values())
        for job in jobs:
            job.task.cancel()
        for job in jobs:
            with contextlib.suppress(asyncio.CancelledError):
                await job.task

    def _consider(self, name: str, pinned: AssignedModel, seq: int) -> None:
        target = Installed(pinned.version, pinned.sha256)
        model_state = self.state.model(name)
        running = self._jobs.get(name)
        if running is not None and running.target == target:
            return
        if model_state.active == target and running is None:
            return
        failed_seq = model_state.failed_at(target)
        if failed_seq is not None and failed_seq >= seq:
            log.info(
                "%s v%d failed here before; waiting for a newer assignment", name, target.version
            )
            return
        if running is not None:
            running.task.cancel()
        task = asyncio.create_task(self._run(name, pinned, seq), name=f"update {name}")
        self._track(Job(name, target, seq, task))

    def _track(self, job: Job) -> None:
        self._jobs[job.model] = job

        def forget(task: asyncio.Task[None]) -> None:
            if self._jobs.get(job.model) is job:
                del self._jobs[job.model]

        job.task.add_done_callback(forget)

    # --- the state machine ------------------------------------------------------------------

    async def _run(self, name: str, pinned: AssignedModel, seq: int) -> None:
        version = pinned.version
        try:
            await self._reporter.event("received", model=name, version=version, seq=seq)
            release, envelope = await self._fetch_release(name, pinned)
            await self._reporter.event("verified", model=name, version=version, seq=seq)
            path = await self._download(name, release)
            await self._set_phase(name, "loading")
            deadline_s = self._config.updates.activation_timeout_s
            await self._activator.activate(name, release, envelope, path, deadline_s)
            await self._commit_or_roll_back(name, release)
        except asyncio.CancelledError:
            raise
        except RejectedError as e:
            await self._fail(name, pinned, seq, kind="rejected", reason=e.reason, detail=str(e))
        except UpdateError as e:
            await self._fail(name, pinned, seq, kind="failed", reason=e.reason, detail=str(e))
        except (AgentError, OSError) as e:
            await self._fail(name, pinned, seq, kind="failed", reason=_reason(e), detail=str(e))

    async def _fetch_release(self, name: str, pinned: AssignedModel) -> tuple[Release, bytes]:
        await self._set_phase(name, "verifying")
        key = (name, pinned.version)
        waiter: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._releases[key] = waiter
        try:
            await self._subscribe(self._topics.release(name, pinned.version))
            envelope = await self._link.wait_for(waiter, self._config.updates.release_timeout_s)
        except TimeoutError as e:
            raise StepTimeoutError(
                f"release {name} v{pinned.version} did not arrive in time"
            ) from e
        finally:
            self._releases.pop(key, None)
            if self._unsubscribe is not None:  # or every reconnect brings the release again
                await self._unsubscribe(self._topics.release(name, pinned.version))
        return self._trust.verify_release(envelope, name, pinned), envelope

    async def _download(self, name: str, release: Release) -> Any:
        sha256 = release.artifact.sha256
        if await asyncio.to_thread(self._store.has_model, sha256):
            return self._store.model_path(sha256)
        await self._set_phase(name, "downloading")
        await asyncio.to_thread(self._store.check_free_space, release.artifact.size)
        download = await asyncio.to_thread(self._store.open_download, release.artifact)
        total = len(release.artifact.chunks)
        await self._reporter.event(
            "downloading", model=name, version=release.version,
            progress={"chunks_done": total - len(download.missing()), "chunks_total": total},
        )  # fmt: skip
        await self._fetcher.fetch(download)
        return await asyncio.to_thread(download.finalize)

    async def _commit_or_roll_back(self, name: str, release: Release) -> None:
        previous = self.state.model(name).active
        target = Installed(release.version, release.artifact.sha256)
        await self._save(name, ModelState(active=target, previous=previous, in_probation=True,
                                          failed=self.state.model(name).failed))  # fmt: skip
        await self._reporter.event("activated", model=name, version=release.version)
        await self._probate(name, target)

    async def _probate(self, name: str, target: Installed) -> None:
        await self._set_phase(name, "probation")
        try:
            await self._activator.probation(name, target.version)
        except UpdateError as e:
            await self._roll_back(name, target, e)
            return
        committed = replace(self.state.model(name), in_probation=False, probation_restarts=0)
        await self._save(name, committed)
        await self._set_phase(name, "idle")
        await self._retain(finished=name)

    async def _roll_back(self, name: str, failed: Installed, error: UpdateError) -> None:
        model_state = self.state.model(name)
        previous = model_state.previous
        await self._activator.restore(name, previous)
        failures = {
            **model_state.failed,
            (failed.version, failed.sha256): self.state.assignment_seq,
        }
        await self._save(name, ModelState(active=previous, failed=failures))
        self.last_errors[name] = str(error)
        back_to = {"to_version": previous.version} if previous else {}
        await self._reporter.event(
            "rolled_back", model=name, version=failed.version, reason=error.reason,
            detail=str(error), **back_to,
        )  # fmt: skip
        await self._set_phase(name, "idle")
        await self._retain(finished=name)

    async def _fail(
        self, name: str, pinned: AssignedModel, seq: int, *, kind: str, reason: str, detail: str
    ) -> None:
        log.warning("%s v%d %s: %s", name, pinned.version, kind, detail)
        model_state = self.state.model(name)
        failures = {**model_state.failed, (pinned.version, pinned.sha256): seq}
        await self._save(name, replace(model_state, failed=failures))
        self.last_errors[name] = detail
        await self._reporter.event(
            kind, model=name, version=pinned.version, reason=reason, detail=detail, seq=seq
        )
        await self._set_phase(name, "failed")
        await self._retain(finished=name)

    # --- helpers ----------------------------------------------------------------------------

    async def _save(self, name: str, model_state: ModelState) -> None:
        self.state = self.state.with_model(name, model_state)
        await asyncio.to_thread(self._states.save, self.state)
        await self._reporter.publish_state()

    def accept_assignment_marks(self, seq: int, digest: str | None) -> None:
        """Record the trust high-water mark (persisted with the next save)."""
        self.state = replace(self.state, assignment_seq=seq, assignment_digest=digest)

    async def save(self) -> None:
        """Persist the current state."""
        await asyncio.to_thread(self._states.save, self.state)

    async def _set_phase(self, name: str, phase: str) -> None:
        self.phases[name] = phase
        self._activator.metrics.set_update_state(name, phase)
        await self._reporter.publish_state()

    async def _retain(self, finished: str | None = None) -> None:
        # Keep what the state refers to and what other updates are fetching; the update that
        # just ended (`finished`) keeps nothing it did not install.
        running = {(job.model, job.target.sha256) for job in self._jobs.values()
                   if job.model != finished}  # fmt: skip
        others = {sha256 for _model, sha256 in running}
        await asyncio.to_thread(self._store.retain, self.state.installed_shas() | others)
        # A removed model's signed release goes with it (its job may be saving one right now).
        await asyncio.to_thread(
            self._states.retain_releases, self.state.installed_releases() | running
        )


def _reason(error: Exception) -> str:
    reason = getattr(error, "reason", None)
    return reason if isinstance(reason, str) else "failed"
