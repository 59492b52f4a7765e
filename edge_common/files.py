"""Durable file writes: temp file in the same directory, fsync, rename, fsync the directory.

A crash at any instant leaves the old or the new content, never a mix, and a new name survives
power loss only once its directory is fsynced too. Blocking: async callers use asyncio.to_thread.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path

TEMP_SUFFIX = ".tmp"  # `.{name}.XXXX.tmp`: what remove_temp_files clears after a crash


def write_atomic(
    path: Path, data: bytes, *, mode: int | None = None, exclusive: bool = False
) -> None:
    """Replace `path` with `data` durably.

    `mode` sets the file's permission bits; without it the file keeps mkstemp's 0600, the right
    default for state and secrets. With `exclusive`, fail with FileExistsError instead of
    replacing an existing file.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    try:
        if mode is not None:
            os.fchmod(fd, mode)  # stated on the descriptor, so no umask can widen it
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(tmp, path)  # fails if the file appeared meanwhile; replace would not
        else:
            os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    """Make renames, new files and deletions in `directory` survive power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_temp_files(directory: Path, min_age_s: float = 0.0) -> list[Path]:
    """Delete the temp files `write_atomic` left in `directory` when a crash cut it short.

    Call only while nothing writes there (at start): a live writer's temp file looks the same.
    Where another process may be writing, `min_age_s` spares the files modified more recently.
    """
    cutoff = time.time() - min_age_s
    removed = [p for p in directory.glob(f".*{TEMP_SUFFIX}") if _older(p, cutoff)]
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        fsync_directory(directory)
    return removed


def _older(path: Path, cutoff: float) -> bool:
    try:
        return path.is_file() and path.stat().st_mtime <= cutoff
    except OSError:  # removed meanwhile by whoever wrote it
        return False


def make_private_dir(path: Path) -> None:
    """Create a directory only its owner can enter (and tighten an existing one)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
