"""The models being served, one per name, and the atomic swap the updater uses.

A request leases the current model (its in-flight count goes up) for as long as it runs.
`swap` replaces the reference in one step under a lock: requests that already hold a lease
finish on the old model, new ones get the new model, and the old session is released when
its last lease is returned. No request ever sees two versions.
"""

from __future__ import annotations

import difflib
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from edge_agent.errors import ModelNotFoundError
from edge_agent.runtime.model import LoadedModel

log = logging.getLogger(__name__)

# Called after every change with (name, old, new); old is None for a first load, new is
# None for a removal. Listeners run on the caller's thread and must not block.
RepositoryListener = Callable[[str, LoadedModel | None, LoadedModel | None], None]


class ModelRepository:
    """Holds the serving LoadedModel of each model name."""

    def __init__(self) -> None:
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()
        self._listeners: list[RepositoryListener] = []

    def add_listener(self, listener: RepositoryListener) -> None:
        """Call `listener` after every swap or removal (metrics, status, events)."""
        self._listeners.append(listener)

    def names(self) -> list[str]:
        """The names of the models being served, sorted."""
        with self._lock:
            return sorted(self._models)

    def snapshot(self) -> list[LoadedModel]:
        """The serving models, sorted by name."""
        with self._lock:
            return [self._models[name] for name in sorted(self._models)]

    def get(self, name: str) -> LoadedModel:
        """Return the serving model called `name`, or raise ModelNotFoundError."""
        with self._lock:
            model = self._models.get(name)
        if model is None:
            raise ModelNotFoundError(_not_served(name, self._models))
        return model

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._models

    def swap(self, name: str, new: LoadedModel) -> LoadedModel | None:
        """Serve `new` under `name` from now on and return the model it replaced, if any.

        Call it once `new` is loaded, warmed up and self-tested. The old model is retired:
        requests already running on it finish there, then its session is released.
        """
        if new.name != name:
            raise ValueError(f"cannot serve model {new.name!r} under the name {name!r}")
        if new.released:
            raise ValueError(f"{new!r} was released and cannot serve")
        with self._lock:
            old = self._models.get(name)
            if old is new:
                return None
            self._models[name] = new
        if old is not None:
            old.retire()
        log.info("model %s: now serving version %d (was %s)", name, new.version, _v(old))
        self._notify(name, old, new)
        return old

    def remove(self, name: str) -> LoadedModel | None:
        """Stop serving `name`; its model is retired like a swapped-out one."""
        with self._lock:
            old = self._models.pop(name, None)
        if old is not None:
            old.retire()
            self._notify(name, old, None)
        return old

    @contextmanager
    def lease(self, name: str, version: str | None = None) -> Iterator[LoadedModel]:
        """Hold the serving model (optionally a specific version) for one request."""
        model = self.hold(name, version)
        try:
            yield model
        finally:
            model.release()

    def hold(self, name: str, version: str | None = None) -> LoadedModel:
        """The serving model (optionally a specific version), acquired: the caller releases
        it (`lease` in a with-statement; the request path, where every call counts)."""
        with self._lock:
            model = self._models.get(name)
            if model is None:
                raise ModelNotFoundError(_not_served(name, self._models))
            if version is not None and version != str(model.version):
                raise ModelNotFoundError(
                    f"model {name!r} has no version {version!r} loaded; "
                    f"version {model.version} is being served"
                )
            # Under the repository lock, so a concurrent swap cannot retire it in between.
            model.acquire()
        return model

    def close(self) -> None:
        """Retire every model (at shutdown)."""
        with self._lock:
            models, self._models = list(self._models.values()), {}
        for model in models:
            model.retire()

    def _notify(self, name: str, old: LoadedModel | None, new: LoadedModel | None) -> None:
        for listener in self._listeners:
            try:
                listener(name, old, new)
            except Exception:
                # A broken observer must never undo or block a swap that already happened.
                log.exception("repository listener failed for model %s", name)


def _v(model: LoadedModel | None) -> str:
    return "none" if model is None else str(model.version)


def _not_served(name: str, served: Mapping[str, object]) -> str:
    """`no model named 'cancr' is being served; did you mean 'cancer'?`"""
    close = difflib.get_close_matches(name, list(served), n=3, cutoff=0.6)
    if close:
        suggestion = " or ".join(map(repr, close))
        return f"no model named {name!r} is being served; did you mean {suggestion}?"
    if not served:
        return f"no model named {name!r} is being served: no model is being served yet"
    return f"no model named {name!r} is being served (GET /v1/status lists the served models)"
