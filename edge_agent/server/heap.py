"""Giving freed heap memory back to the system once large request bodies are gone.

Bodies arrive in 64 KiB pieces, below glibc's mmap threshold, so they live on the heap; when
they are freed glibc keeps the pages for later unless told otherwise, and an agent that once
held a budget's worth of bodies would keep that much resident for good. malloc_trim returns
them. Where the C library has no malloc_trim (musl), this does nothing.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _find_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim  # the process's own libc
    except (OSError, AttributeError):
        return None
    return trim


_MALLOC_TRIM = _find_malloc_trim()


def give_back_memory() -> None:
    """Return the free pages of the heap to the system, where the C library can."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
