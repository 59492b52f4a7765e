"""What the updater knows and keeps: the device's state in memory and on disk, and each model's
phase and last error as the state message reports them.

The state in memory is the truth and `state.json` its durable copy: every change goes through
`_save`, whose write the disk may refuse (`edge_agent.storage.writes`); the refusal is returned
and the write retried until it lands (`_landed` hears it). The updater (`updater.py`) is the
state machine built on this record.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from edge_agent.config.settings import DeviceConfig
from edge_agent.errors import StoreError
from edge_agent.storage.state import AgentState, ModelState, StateStore
from edge_agent.storage.writes import PendingWrites, Write
from edge_agent.update.activation import Activator
from edge_agent.uplink.reporting import Reporter
from edge_protocol import TrustedState
from edge_protocol.messages import UpdatePhase

STATE_KEY = "state.json"  # the key of state.json's writes in PendingWrites


class UpdateLedger:
    """The device's update state, its durable copy, and the phases reported upstream."""

    def __init__(
        self,
        config: DeviceConfig,
        trust: TrustedState,
        *,
        states: StateStore,
        activator: Activator,
        reporter: Reporter,
    ) -> None:
        self._config = config
        # The last accepted assignment's seq and digest belong to `trust`, which moves them as
        # it verifies; state.json's copy is stamped from it at every write (`_write_state`).
        self._trust = trust
        self._states = states
        self.state = states.load()
        self._persisted = self.state  # what state.json holds: retention keeps its models too
        self._activator = activator
        self._reporter = reporter
        settings = config.updates
        self.writes = PendingWrites(
            min_s=settings.write_retry_min_s, max_s=settings.write_retry_max_s,
            on_landed=self._landed,
        )  # fmt: skip
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
        """A refused write landed (the updater finishes what waited for it)."""

    async def _set_phase(self, name: str, phase: UpdatePhase) -> None:
        self._phases[name] = phase
        self._activator.metrics.set_update_state(name, phase)
        await self._reporter.publish_state()
