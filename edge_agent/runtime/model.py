"""One loaded model: an onnxruntime session plus what the server needs to know about it.

Everything here blocks (loading, hashing, session.run): callers on the event loop go through
an executor. The in-flight count lets a swapped-out model finish what it started and release
its session only when the last request using it is done ("load the new, then drop the old").
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

from edge_agent.errors import (
    InferenceError,
    InvalidRequestError,
    ModelLoadError,
    ModelNotReadyError,
)
from edge_agent.runtime.costs import INLINE_CANDIDATE_NS, PROBE_ROWS, RunCost, fit, time_runs
from edge_agent.runtime.iospec import OIP_TO_NUMPY, VARIABLE, derive_io, shares_batch_axis
from edge_agent.runtime.options import CPU_PROVIDER, RuntimeOptions
from edge_protocol import ModelIO, Profile, TensorSpec, check_self_contained
from edge_protocol.errors import ExternalDataError, ModelFormatError

log = logging.getLogger(__name__)

Array = np.ndarray[Any, Any]


class LoadedModel:
    """A model version with a live onnxruntime session, ready to serve."""

    def __init__(
        self, session: Any, *, name: str, version: int, sha256: str, loaded_at: datetime
    ) -> None:
        self.name = name
        self.version = version
        self.sha256 = sha256
        self.loaded_at = loaded_at
        inputs, outputs = session.get_inputs(), session.get_outputs()
        self.io: ModelIO = derive_io(inputs, outputs)
        self.batchable: bool = shares_batch_axis(inputs, outputs)
        self.providers: tuple[str, ...] = tuple(session.get_providers())
        self._session: Any = session
        self.run_cost: RunCost | None = None  # measured by warm_up; None: never run inline
        self.profile: Profile | None = None  # the release's drift profile, set on activation
        self._lock = threading.Lock()
        self._in_flight = 0
        self._retired = False
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    def __repr__(self) -> str:
        return f"<LoadedModel {self.name} v{self.version} {self.sha256[:12]}>"

    @property
    def in_flight(self) -> int:
        """Requests and batches currently holding this model."""
        return self._in_flight

    @property
    def released(self) -> bool:
        """Whether the session has been dropped; a released model runs nothing."""
        return self._session is None

    def run(
        self, inputs: Mapping[str, Array], output_names: Sequence[str] | None = None
    ) -> dict[str, Array]:
        """Run the session on named arrays and return the named outputs (blocking)."""
        session = self._session
        if session is None:
            raise ModelNotReadyError(f"model {self.name!r} version {self.version} was released")
        names = list(output_names) if output_names else [t.name for t in self.io.outputs]
        try:
            results = session.run(names, dict(inputs))
        except InvalidArgument as e:
            raise InvalidRequestError(f"model {self.name!r} rejected the input: {e}") from e
        except Exception as e:
            raise InferenceError(f"model {self.name!r} failed to run: {e}") from e
        return {name: np.asarray(value) for name, value in zip(names, results, strict=True)}

    def warm_up(self, rows: int = 1) -> None:
        """Run the session on zeros so the first real request does not pay for setup, and
        measure what a run costs (the batcher runs cheap models on the event loop: costs.py)."""
        one = {spec.name: example_input(spec, rows) for spec in self.io.inputs}
        self.run(one)
        probes = [(_elements(one), time_runs(lambda: self.run(one)))]
        if self.batchable and probes[0][1] <= INLINE_CANDIDATE_NS:
            more = {spec.name: example_input(spec, rows * PROBE_ROWS) for spec in self.io.inputs}
            self.run(more)
            probes.append((_elements(more), time_runs(lambda: self.run(more))))
        self.run_cost = fit(probes[0], probes[1] if len(probes) > 1 else None)

    def acquire(self) -> None:
        """Count one more user of this model; fails once the session is released."""
        with self._lock:
            if self._session is None:
                raise ModelNotReadyError(f"model {self.name!r} version {self.version} was released")
            self._in_flight += 1

    def release(self) -> None:
        """Count one user less; the last one out of a retired model releases the session."""
        with self._lock:
            self._in_flight -= 1
            close = self._retired and self._in_flight == 0
        if close:
            self.close()

    def retire(self) -> None:
        """Stop serving: release the session now, or when the in-flight count reaches zero."""
        with self._lock:
            self._retired = True
            close = self._in_flight == 0
        if close:
            self.close()

    def close(self) -> None:
        """Drop the session reference; onnxruntime frees it once no run still uses it."""
        with self._lock:
            self._session = None
            waiters, self._waiters = self._waiters, []
        for loop, future in waiters:
            loop.call_soon_threadsafe(_resolve, future)

    async def wait_released(self) -> None:
        """Wait until the session has been released (after retire and the last request)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        with self._lock:
            if self._session is None:
                return
            self._waiters.append((loop, future))
        await future


def _elements(inputs: Mapping[str, Array]) -> int:
    return sum(int(value.size) for value in inputs.values())


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def example_input(spec: TensorSpec, rows: int = 1) -> Array:
    """Return a zero-valued array matching `spec`, variable dimensions set to `rows` or 1."""
    shape = tuple(rows if i == 0 and d == VARIABLE else max(d, 1) for i, d in enumerate(spec.shape))
    if spec.datatype == "BYTES":
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=OIP_TO_NUMPY[spec.datatype])


def load_model(
    source: Path | bytes,
    *,
    name: str,
    version: int,
    options: RuntimeOptions | None = None,
    expected_sha256: str | None = None,
) -> LoadedModel:
    """Create a session from a model file or its bytes (blocking).

    The session is built from the very bytes that were hashed, so a file replaced between
    verification and loading cannot slip in: with `expected_sha256` a mismatch is refused.
    """
    data = _read(source)
    sha256 = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and sha256 != expected_sha256:
        raise ModelLoadError(
            f"model {name!r} version {version}: sha256 {sha256} does not match the verified "
            f"{expected_sha256}"
        )
    session = create_session(data, options or RuntimeOptions(), label=f"{name!r} v{version}")
    return LoadedModel(
        session, name=name, version=version, sha256=sha256, loaded_at=datetime.now(UTC)
    )


def _read(source: Path | bytes) -> bytes:
    if isinstance(source, bytes):
        return source
    try:
        return source.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"cannot read model file {source}: {e}") from e


def create_session(data: bytes, options: RuntimeOptions, *, label: str) -> Any:
    """Return an InferenceSession on the requested providers, falling back to CPU alone.

    Raises ExternalDataError, before any session exists, for a model that refers to data
    outside its bytes, and ModelLoadError for one that is not a readable ONNX protobuf.
    """
    refuse_external_data(data, label)
    available = set(ort.get_available_providers())
    wanted = [p for p in options.providers if p in available]
    skipped = [p for p in options.providers if p not in available]
    if skipped:
        log.warning("model %s: providers %s are not available here; skipped", label, skipped)
    try:
        return _session(data, options, wanted)
    except Exception as first:
        if wanted == [CPU_PROVIDER]:
            raise ModelLoadError(f"model {label}: onnxruntime cannot load it: {first}") from first
        log.warning("model %s: providers %s failed (%s); retrying on CPU", label, wanted, first)
    try:
        return _session(data, options, [CPU_PROVIDER])
    except Exception as e:
        raise ModelLoadError(f"model {label}: onnxruntime cannot load it: {e}") from e


def refuse_external_data(data: bytes, label: str) -> None:
    """Raise unless every tensor of the model is stored inside `data`."""
    # onnxruntime reads a tensor's "external data" from a file of this device, resolving a
    # relative location against the working directory: the credentials, the state, /etc.
    try:
        check_self_contained(data)
    except ExternalDataError as e:
        raise ExternalDataError(f"model {label}: {e}") from e
    except ModelFormatError as e:
        raise ModelLoadError(f"model {label} is not a well-formed ONNX model: {e}") from e


def _session(data: bytes, options: RuntimeOptions, providers: list[str]) -> Any:
    session_options = ort.SessionOptions()
    session_options.intra_op_num_threads = options.intra_op_threads
    session_options.inter_op_num_threads = options.inter_op_threads
    return ort.InferenceSession(data, sess_options=session_options, providers=providers)
