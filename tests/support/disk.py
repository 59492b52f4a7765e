"""A small real file system that a test fills up: a tmpfs mounted for the test (needs root).

Writes fail on it with ENOSPC exactly as on a full SD card: nothing is simulated. Where this
machine cannot mount one (not root, no CAP_SYS_ADMIN), the test is skipped saying so.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

FILLER = "filler"


@dataclass(frozen=True)
class SmallDisk:
    """A mounted tmpfs and the file that takes its free space."""

    path: Path

    @property
    def filler(self) -> Path:
        """The file that fills the disk (outside the agent's own directories)."""
        return self.path / FILLER

    def fill(self) -> None:
        """Write the filler until the file system refuses even one more byte."""
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1024 * 1024, 4096, 1):
                _write_until_full(fd, bytes(size))
        finally:
            os.close(fd)
        assert os.statvfs(self.path).f_bavail == 0

    def free(self) -> None:
        """Remove the filler: the space is back."""
        self.filler.unlink()


def _write_until_full(fd: int, block: bytes) -> None:
    while True:
        try:
            os.write(fd, block)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            return


@contextlib.contextmanager
def small_disk(mount_point: Path, size_bytes: int) -> Iterator[SmallDisk]:
    """Mount a tmpfs of `size_bytes` at `mount_point` (created) for the duration of the block."""
    mount_point.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up: {result.stderr.strip()}")
    try:
        yield SmallDisk(mount_point)
    finally:
        # Lazy: a process the test started may still hold a file open on it.
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
