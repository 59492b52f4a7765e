"""The working directory of `serve`: an empty directory of its own, created at start.

Libraries resolve relative paths against the working directory; onnxruntime does so for the
"external data" location of a tensor in a model given as bytes. The directory `serve` happens
to be started from is often the parent of the home (`./registry-home` is the default) or the
home itself, so a relative path would reach the release key and the tokens. Models that refer
to external data are refused before any session is made; running from an empty directory that
only this user can enter means that, should anything else resolve a relative path, it finds
nothing there.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

PREFIX = "model-registry-serve-"


@contextlib.contextmanager
def empty_workdir() -> Iterator[Path]:
    """Run the block from a new empty 0700 directory; leave it and remove it afterwards."""
    # mkdtemp creates the directory with mode 0700 under $TMPDIR (a private /tmp under systemd's
    # PrivateTmp=); its random name is not next to anything of the home.
    directory = Path(tempfile.mkdtemp(prefix=PREFIX))
    os.chdir(directory)
    try:
        yield directory
    finally:
        os.chdir("/")
        with contextlib.suppress(OSError):  # something was left in it: keep it for a look
            directory.rmdir()
