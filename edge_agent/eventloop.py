"""The agent's event loop: uvloop where it is installed (the `fast` extra), asyncio otherwise.

uvloop answers the same asyncio API with less work per socket event and callback, which is
most of what a small inference request costs; nothing in the agent depends on which loop runs.
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop constructor, or None for asyncio's own."""
    if importlib.util.find_spec("uvloop") is None:
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional: the `fast` extra
    except ImportError:  # installed for another Python, or broken: asyncio serves as well
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name() -> str:
    """Which loop `run` uses, for the log."""
    return "asyncio" if loop_factory() is None else "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the best loop installed."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
