"""What an experiment needs to come back after a restart, kept in the state directory.

A restart (a crash, a power cut, a clean stop) must not end an experiment the registry still
counts the device in: the accepted assignment that names it is kept as signed, and the
candidate's signed release beside the release of every installed model. At the next start
both are verified again (the signature under the trusted root, the assignment being the one
the high-water mark records, the release matching its pin), and the candidate's file comes
from the model store, whose loading checks its hash. The broker is not needed: a device that
comes back offline serves the same experiment.
"""

from __future__ import annotations

import asyncio
import logging

from edge_agent.storage.state import StateStore
from edge_protocol import AssignedModel, Assignment, Release, TrustedState
from edge_protocol.errors import FormatError, RejectedError

log = logging.getLogger(__name__)


class KeptExperiments:
    """The kept assignment of the running experiments, and their candidates' releases."""

    def __init__(self, states: StateStore, trust: TrustedState) -> None:
        self._states = states
        self._trust = trust
        # (model, sha256) of every candidate the kept assignment names: retention keeps
        # their files and releases, or a restart would have to download them again.
        self.candidates: set[tuple[str, str]] = set()

    def name(self, assignment: Assignment, followed: set[str]) -> None:
        """Remember the candidates of `assignment` (of the followed models) for retention."""
        self.candidates = {
            (name, entry.experiment.candidate.sha256)
            for name, entry in assignment.models.items()
            if entry.experiment is not None and name in followed
        }

    async def keep(self, envelope: bytes | None) -> None:
        """Keep the signed assignment (None: no experiment runs any more, drop it).

        A refused write is logged, not retried: the experiment runs on; only a restart before
        the next assignment would lose it, as it did before anything was kept.
        """
        try:
            await asyncio.to_thread(self._states.keep_experiment_assignment, envelope)
        except OSError as e:
            log.warning("cannot keep the experiment assignment (%s): a restart would end it", e)

    async def load(self) -> Assignment | None:
        """The kept assignment, verified again; None when there is none or it does not hold."""
        data = await asyncio.to_thread(self._states.kept_experiment_assignment)
        if data is None:
            return None
        try:
            return self._trust.verify_kept_assignment(data)
        except (RejectedError, FormatError) as e:
            # A newer assignment was accepted since (its experiments are not this one's), or
            # the file was altered: either way it names nothing the device should run.
            log.warning("not resuming the kept experiment assignment: %s", e)
            await self.keep(None)
            return None

    async def release(self, name: str, pin: AssignedModel) -> tuple[Release, bytes] | None:
        """The candidate's kept release, verified against its pin; None when there is none."""
        path = self._states.release_path(name, pin.sha256)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            return None
        except OSError as e:
            log.warning("the kept release of %s v%d does not read: %s", name, pin.version, e)
            return None
        try:
            return self._trust.verify_release(data, name, pin, kept=True), data
        except (RejectedError, FormatError) as e:
            log.warning("the kept release of %s v%d is refused: %s", name, pin.version, e)
            return None

    async def keep_release(self, name: str, release: Release, envelope: bytes) -> None:
        """Keep the candidate's verified release for the next start (a failure is logged)."""
        try:
            await asyncio.to_thread(
                self._states.save_release, name, release.artifact.sha256, envelope
            )
        except OSError as e:
            log.warning("cannot keep the release of %s v%d: %s", name, release.version, e)
