"""Putting a verified model file into service: load, warm up, self-test, swap; and back.

"Load the new, then drop the old": the new session is created, warmed and made to reproduce
its release's golden self-test before the swap; requests in flight finish on the old session.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.config.settings import UpdateSettings
from edge_agent.errors import AgentError, InferenceError, ModelLoadError, StepTimeoutError
from edge_agent.metrics import AgentMetrics
from edge_agent.runtime import LoadedModel, ModelRepository, RuntimeOptions, load_model
from edge_agent.runtime.iospec import OIP_TO_NUMPY
from edge_agent.storage.state import Installed, StateStore
from edge_agent.storage.store import ModelStore
from edge_agent.update.observations import RecentAnswers
from edge_agent.update.probation import ProbationWatcher, previous_record
from edge_protocol import (
    Envelope,
    Profile,
    ProtocolError,
    Release,
    SelfTest,
    TensorData,
    check_selftest_outputs,
)

log = logging.getLogger(__name__)
NUMPY_TO_OIP = {dtype: name for name, dtype in OIP_TO_NUMPY.items() if name != "BYTES"}


class Activator:
    """Loads models into the serving repository and takes them out again."""

    def __init__(
        self,
        repository: ModelRepository,
        metrics: AgentMetrics,
        *,
        options: RuntimeOptions,
        store: ModelStore,
        states: StateStore,
        settings: UpdateSettings,
    ) -> None:
        self.repository = repository
        self.metrics = metrics
        self._options = options
        self._store = store
        self._states = states
        self._settings = settings
        self.recent = RecentAnswers(metrics)  # what each version answered lately (probation)

    async def activate(
        self, name: str, release: Release, envelope: bytes, path: Path, deadline_s: float
    ) -> None:
        """Load, warm up and self-test the model, keep its release, then swap it in."""
        loaded = await self.prepare(name, release, path, deadline_s)
        try:  # before the swap: a model whose release is not kept must not serve
            await asyncio.to_thread(
                self._states.save_release, name, release.artifact.sha256, envelope
            )
        except BaseException:
            loaded.close()  # never swapped in, so nothing else holds its session
            raise
        self.repository.swap(name, loaded)
        log.info("%s v%d is serving", name, release.version)

    async def prepare(
        self, name: str, release: Release, path: Path, deadline_s: float
    ) -> LoadedModel:
        """Load, warm up and self-test the model, ready to serve (not served yet): the
        updater swaps it in, an experiment holds it as its candidate."""
        try:
            async with asyncio.timeout(deadline_s):
                loaded = await self._load(name, release.version, release.artifact.sha256, path)
                try:
                    await asyncio.to_thread(run_selftest, loaded, release.selftest)
                except BaseException:
                    loaded.close()
                    raise
        except TimeoutError as e:
            raise StepTimeoutError(f"loading and self-testing took over {deadline_s:.0f} s") from e
        except Exception:
            self.metrics.record_load_failure(name)
            raise
        loaded.profile = release.profile  # what telemetry counts drift against
        return loaded

    async def probation(self, name: str, version: int, previous: int | None = None) -> None:
        """Wait out the new version's probation (raises a ProbationFailedError)."""
        record = previous_record(self.recent, name, previous)
        await ProbationWatcher(self.metrics, name, version, self._settings, record).watch()

    async def restore(self, name: str, installed: Installed | None) -> None:
        """Serve `installed` again (loaded afresh from the store), or nothing."""
        if installed is None:
            self.repository.remove(name)
            return
        loaded = await self._load(
            name, installed.version, installed.sha256, self._store.model_path(installed.sha256)
        )
        loaded.profile = await asyncio.to_thread(self._kept_profile, name, installed.sha256)
        self.repository.swap(name, loaded)

    async def serve_installed(self, name: str, installed: Installed) -> bool:
        """At start-up: serve an installed model if its file is intact; say whether it is."""
        try:
            await self.restore(name, installed)
        except (AgentError, ProtocolError, OSError, ValueError, RuntimeError) as e:
            log.error("cannot serve %s v%d from the store: %s", name, installed.version, e)
            return False
        return True

    def _kept_profile(self, name: str, sha256: str) -> Profile | None:
        """The drift profile of the release kept beside an installed model (blocking).

        The release was verified when it was kept; a copy that no longer reads only costs its
        drift counts, never the serving, so it is logged and passed over.
        """
        path = self._states.release_path(name, sha256)
        try:
            return Release.from_dict(Envelope.from_bytes(path.read_bytes()).signed).profile
        except FileNotFoundError:
            return None
        except (OSError, ProtocolError) as e:
            log.warning("the kept release of %s %s does not read (%s): no drift bins", name,
                        sha256[:12], e)  # fmt: skip
            return None

    async def _load(self, name: str, version: int, sha256: str, path: Path) -> LoadedModel:
        loaded = await asyncio.to_thread(
            load_model, path, name=name, version=version, options=self._options,
            expected_sha256=sha256,
        )  # fmt: skip
        try:
            await asyncio.to_thread(loaded.warm_up)
        except BaseException as e:
            loaded.close()  # never served: nothing else holds its session
            if isinstance(e, InferenceError):  # loading includes the warm-up (load_error)
                raise ModelLoadError(f"{name} v{version} fails its warm-up run: {e}") from e
            raise
        return loaded


def run_selftest(model: LoadedModel, selftest: SelfTest) -> None:
    """Run the golden inputs and compare with the golden outputs (SelfTestMismatchError)."""
    inputs = {tensor.name: _array(tensor) for tensor in selftest.inputs}
    outputs = model.run(inputs, [tensor.name for tensor in selftest.outputs])
    check_selftest_outputs(
        selftest, {name: _tensor(name, array) for name, array in outputs.items()}
    )


def _array(tensor: TensorData) -> Any:
    return np.frombuffer(tensor.data, dtype=OIP_TO_NUMPY[tensor.datatype]).reshape(tensor.shape)


def _tensor(name: str, array: Any) -> TensorData:
    contiguous = np.ascontiguousarray(array)
    datatype = NUMPY_TO_OIP.get(contiguous.dtype.newbyteorder("<"), "BYTES")
    return TensorData(
        name,
        datatype,
        tuple(contiguous.shape),
        contiguous.astype(contiguous.dtype.newbyteorder("<")).tobytes(),
    )
