"""Starting and stopping the experiments an accepted assignment names (docs/agent.md).

For a model whose entry carries an experiment: wait until the control (the entry's pinned
release, which the updater installs) is being served, check that both variants fit the memory
budget, then fetch and verify the candidate's release and file exactly as an update does
(`Acquisition`), load, warm up and self-test it (`Activator.prepare`), and hand it to
`Experiments`. A model whose entry has no experiment any more goes back to its control alone.
Every refusal is a `rejected` or `failed` event naming the candidate's version and the reason;
the control keeps serving whatever happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from edge_agent.config.settings import DeviceConfig
from edge_agent.errors import AgentError, StepTimeoutError
from edge_agent.experiments.active import Experiments
from edge_agent.experiments.kept import KeptExperiments
from edge_agent.mqtt.link import LinkState
from edge_agent.runtime import ModelRepository
from edge_agent.storage.state import StateStore
from edge_agent.storage.store import ModelStore
from edge_agent.storage.writes import store_error
from edge_agent.update.acquire import Acquisition
from edge_agent.update.activation import Activator
from edge_agent.update.fetch import ChunkFetcher
from edge_agent.uplink.reporting import Reporter
from edge_common.supervise import watch
from edge_protocol import AssignedModel, Assignment, ExperimentSpec, RejectedError, TrustedState
from edge_protocol.messages import EventKind, UpdatePhase

log = logging.getLogger(__name__)

MEMORY_BUDGET = "memory_budget"  # agent-local reason: the variants would not fit (protocol 5.7)
CONTROL_POLL_S = 0.2


class MemoryBudgetError(AgentError):
    """Both variants of an experiment would not fit the device's memory budget."""

    reason = MEMORY_BUDGET


class ExperimentInstaller:
    """Follows the experiments of accepted assignments, one task per model."""

    def __init__(
        self,
        config: DeviceConfig,
        trust: TrustedState,
        *,
        experiments: Experiments,
        repository: ModelRepository,
        activator: Activator,
        store: ModelStore,
        states: StateStore,
        reporter: Reporter,
        fetcher: ChunkFetcher,
        subscribe: Callable[[str], Coroutine[Any, Any, None]],
        link: LinkState | None = None,
        unsubscribe: Callable[[str], Coroutine[Any, Any, None]] | None = None,
    ) -> None:
        self._config = config
        self.kept = KeptExperiments(states, trust)
        self._experiments = experiments
        self._repository = repository
        self._activator = activator
        self._reporter = reporter
        # An acquisition of its own, whose phases are not the control's update phases.
        self._acquire = Acquisition(
            config, trust, store=store, reporter=reporter, fetcher=fetcher, subscribe=subscribe,
            set_phase=_no_phase, link=link, unsubscribe=unsubscribe,
        )  # fmt: skip
        self._tasks: dict[str, tuple[ExperimentSpec, asyncio.Task[None]]] = {}

    def on_release(self, model: str, version: int, payload: bytes) -> None:
        """Hand a release document from the broker to a candidate waiting for it."""
        self._acquire.on_release(model, version, payload)

    async def resume(self) -> None:
        """At start-up: run again the experiments of the kept assignment (kept.py)."""
        assignment = await self.kept.load()
        if assignment is not None:
            await self.apply(assignment)

    async def apply(self, assignment: Assignment, envelope: bytes | None = None) -> None:
        """Start, keep or stop each followed model's experiment as `assignment` says;
        `envelope`, the assignment as signed, is kept while it names an experiment."""
        followed = {name for name in assignment.models if self._config.follows(name)}
        self.kept.name(assignment, followed)
        if envelope is not None:
            await self.kept.keep(envelope if self.kept.candidates else None)
        for name, entry in assignment.models.items():
            if not self._config.follows(name):
                continue
            spec = entry.experiment
            running = self._experiments.get(name)
            pending = self._tasks.get(name)
            if spec is None:
                await self._cancel(name)
                if running is not None:
                    await self._experiments.stop(name)
                continue
            if (
                running is not None
                and running.spec == spec
                and running.control_version == (entry.version)
            ):
                continue
            if pending is not None and pending[0] == spec:
                continue
            await self._cancel(name)
            task = asyncio.create_task(self._start(name, entry, spec, assignment),
                                       name=f"experiment {name}")  # fmt: skip
            watch(task)
            self._tasks[name] = (spec, task)
            task.add_done_callback(self._forgetter(name, spec))

    async def close(self) -> None:
        """Cancel the candidates being installed (the experiments themselves stop with the
        server)."""
        for name in list(self._tasks):
            await self._cancel(name)

    def _forgetter(self, name: str, spec: ExperimentSpec) -> Callable[[asyncio.Task[None]], None]:
        def forget(_task: asyncio.Task[None]) -> None:
            pending = self._tasks.get(name)
            if pending is not None and pending[0] == spec and pending[1].done():
                del self._tasks[name]

        return forget

    async def _cancel(self, name: str) -> None:
        pending = self._tasks.pop(name, None)
        if pending is not None:
            pending[1].cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending[1]

    async def _start(
        self, name: str, entry: AssignedModel, spec: ExperimentSpec, assignment: Assignment
    ) -> None:
        candidate = spec.candidate
        version = candidate.version
        try:
            await self._control_served(name, entry.version)
            self._check_budget(name, spec, assignment)
            pin = AssignedModel(candidate.version, candidate.sha256, candidate.size)
            kept = await self.kept.release(name, pin)
            release, signed = kept or await self._acquire.release(name, pin)
            path = await self._acquire.model_file(name, release)  # the store's copy if any
            if kept is None:
                await self.kept.keep_release(name, release, signed)
            deadline_s = self._config.updates.activation_timeout_s
            loaded = await self._activator.prepare(name, release, path, deadline_s)
        except asyncio.CancelledError:
            raise
        except RejectedError as e:
            kind, reason, detail = EventKind.REJECTED, e.reason, str(e)
            await self._refused(name=name, version=version, kind=kind, reason=reason,
                                detail=detail, assignment=assignment)  # fmt: skip
            return
        except (AgentError, OSError) as e:
            error = store_error(e) if isinstance(e, OSError) else e
            found = getattr(error, "reason", None)
            reason = found if isinstance(found, str) else "failed"
            kind = EventKind.REJECTED if reason == MEMORY_BUDGET else EventKind.FAILED
            await self._refused(name=name, version=version, kind=kind, reason=reason,
                                detail=str(error), assignment=assignment)  # fmt: skip
            return
        await self._experiments.start(name, entry.version, spec, loaded)
        await self._reporter.event(
            EventKind.VERIFIED, model=name, version=version, seq=assignment.seq
        )

    async def _control_served(self, name: str, version: int) -> None:
        """Wait until the updater serves the control (it may be installing it right now)."""
        limit = self._config.updates.release_timeout_s + self._config.updates.download_timeout_s
        try:
            async with asyncio.timeout(limit + self._config.updates.activation_timeout_s):
                # The updater swaps the control in on this loop; polling the repository is
                # simpler than a listener that would have to outlive a cancelled start.
                while not self._serves(name, version):  # noqa: ASYNC110
                    await asyncio.sleep(CONTROL_POLL_S)
        except TimeoutError as e:
            raise StepTimeoutError(f"the control {name} v{version} never came to serve") from e

    def _serves(self, name: str, version: int) -> bool:
        try:
            return self._repository.get(name).version == version
        except AgentError:
            return False

    def _check_budget(self, name: str, spec: ExperimentSpec, assignment: Assignment) -> None:
        """Refuse a candidate whose memory, with every model served, exceeds the budget."""
        settings = self._experiments.settings
        if not settings.memory_budget_bytes:
            return
        files = sum(m.size for n, m in assignment.models.items() if self._config.follows(n))
        files += sum(m.experiment.candidate.size for n, m in assignment.models.items()
                     if m.experiment is not None and self._config.follows(n))  # fmt: skip
        needed = files * settings.memory_per_model_byte
        if needed > settings.memory_budget_bytes:
            raise MemoryBudgetError(
                f"experiment {spec.name!r}: {name} v{spec.candidate.version} beside the control "
                f"needs about {needed / 2**20:.1f} MiB ({settings.memory_per_model_byte:g} x "
                f"{files / 2**20:.1f} MiB of model files), over the memory budget of "
                f"{settings.memory_budget_bytes / 2**20:.1f} MiB ([experiments] memory_budget_mb)"
            )

    async def _refused(
        self,
        *,
        name: str,
        version: int,
        kind: EventKind,
        reason: str,
        detail: str,
        assignment: Assignment,
    ) -> None:
        log.warning("%s: experiment candidate v%d refused (%s): %s", name, version, reason, detail)
        await self._reporter.event(
            kind, model=name, version=version, reason=reason,
            detail=f"experiment candidate: {detail}", seq=assignment.seq,
        )  # fmt: skip


async def _no_phase(name: str, phase: UpdatePhase) -> None:
    """The candidate's steps do not change the model's update phase (the control's)."""
