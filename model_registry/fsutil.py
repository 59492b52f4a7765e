"""Durable file writes: temp file in the same directory, fsync, rename, fsync the directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_file_atomic(
    path: Path, data: bytes, *, mode: int = 0o644, exclusive: bool = False
) -> None:
    """Replace `path` with `data` so a crash leaves the old or the new file, never a mix.

    With `exclusive`, fail with FileExistsError instead of replacing an existing file.
    """
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if exclusive:
            os.link(tmp_name, path)  # fails if the file appeared meanwhile; replace would not
        else:
            os.replace(tmp_name, path)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    fsync_directory(path.parent)


def remove_temp_files(directory: Path) -> list[Path]:
    """Delete the temp files `write_file_atomic` left in `directory` when a crash cut it short.

    Call only while nothing writes there (at start): a live writer's temp file looks the same.
    """
    removed = [p for p in directory.glob(".*.tmp") if p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    if removed:
        fsync_directory(directory)
    return removed


def fsync_directory(directory: Path) -> None:
    """Make a rename or a new file in `directory` survive power loss."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_private_dir(path: Path) -> None:
    """Create a directory only its owner can enter."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
