"""Close names for a name that does not exist: `no model 'digitz'; did you mean 'digits'?`."""

from __future__ import annotations

import difflib
import logging

from model_registry.errors import RegistryError, UnknownNameError
from model_registry.storage import Storage

MAX_SUGGESTIONS = 3
CUTOFF = 0.6  # difflib's similarity ratio below which a name is not offered
log = logging.getLogger(__name__)


async def explain(storage: Storage, error: UnknownNameError) -> str:
    """The error's sentence with the close names that do exist, or what exists at all."""
    try:
        names = await known_names(storage, error.kind)
    except RegistryError:  # the answer is still the 404; only the hint is lost
        log.warning("cannot list %ss for a suggestion", error.kind, exc_info=True)
        return str(error)
    return str(error) + suggestion(error.name, names, error.kind)


async def known_names(storage: Storage, kind: str) -> list[str]:
    """Every existing name of `kind` ("model", "device" or "group")."""
    if kind == "model":
        return [summary.name for summary in await storage.models()]
    devices = await storage.devices()
    if kind == "group":
        return sorted({device.group for device in devices})
    return [device.device_id for device in devices]


def suggestion(name: str, names: list[str], kind: str) -> str:
    """`; did you mean 'a' or 'b'?`, or a note that there is none of `kind` at all."""
    if not names:
        return f" (the registry has no {kind}s yet)"
    close = difflib.get_close_matches(name, names, n=MAX_SUGGESTIONS, cutoff=CUTOFF)
    if not close:
        return ""
    quoted = [f"'{each}'" for each in close]
    return f"; did you mean {' or '.join(quoted)}?"
