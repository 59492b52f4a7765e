"""`BlobStore`: content-addressed files named by their SHA-256.

A blob with hash `abcdef...` lives at `root/ab/abcdef...`; the two-character fan-out keeps
directories small. Writes are atomic and durable (temp file in the same directory, fsync,
rename, fsync the directory), so a crash leaves a blob whole or absent, never torn.

The methods are synchronous and block on disk I/O: async code calls them through
`asyncio.to_thread`. Reads trust the file system; `verify` re-hashes when that is wanted.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from pathlib import Path

from edge_common.files import fsync_directory, remove_temp_files, write_atomic
from model_registry.errors import InvalidInputError, NotFoundError

_NAME = re.compile(r"[0-9a-f]{64}")
_LEGACY_TEMP_PREFIX = ".tmp-"  # never a valid blob name, so a crash's leftovers are easy to find
_CHUNK = 1 << 20  # bytes hashed per read in verify: bounded memory for any blob size
_MODE = 0o644  # blobs are published artifacts, not secrets


class BlobStore:
    """Content-addressed blobs under one directory; synchronous, call via asyncio.to_thread."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, sha256: str) -> Path:
        """Return where the blob lives; raises InvalidInputError unless 64 lowercase hex."""
        # fullmatch on a hex-only pattern is what rules out "..", "/" and absolute names.
        if _NAME.fullmatch(sha256) is None:
            raise InvalidInputError(f"{sha256!r} is not a SHA-256 hex digest")
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes, sha256: str | None = None) -> str:
        """Store `data` atomically unless it is stored already; return its SHA-256 hex.

        `sha256` is the digest the caller already computed of these same bytes, so a large
        model is hashed once per push rather than once per step.
        """
        if sha256 is None:
            sha256 = hashlib.sha256(data).hexdigest()
        target = self.path(sha256)
        # Same name means same content, but a truncated file (a disk fault) gets rewritten.
        if target.is_file() and target.stat().st_size == len(data):
            return sha256
        self._make_fanout_dir(target.parent)
        # Concurrent puts of the same blob are harmless: both renames install equal bytes.
        write_atomic(target, data, mode=_MODE)
        return sha256

    def exists(self, sha256: str) -> bool:
        """Return whether the blob is stored."""
        return self.path(sha256).is_file()

    def size(self, sha256: str) -> int:
        """Return the blob's size in bytes; raises NotFoundError."""
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError as e:
            raise _missing(sha256) from e

    def read(self, sha256: str) -> bytes:
        """Return the whole blob; raises NotFoundError."""
        try:
            return self.path(sha256).read_bytes()
        except FileNotFoundError as e:
            raise _missing(sha256) from e

    def read_range(self, sha256: str, start: int, end_inclusive: int) -> bytes:
        """Return bytes `start` to `end_inclusive`, clipped to the blob as HTTP ranges are."""
        if start < 0 or end_inclusive < start:
            raise InvalidInputError(f"bad byte range {start}-{end_inclusive}")
        try:
            with self.path(sha256).open("rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if start >= size:
                    raise InvalidInputError(
                        f"byte range {start}-{end_inclusive} starts past the end ({size} bytes)"
                    )
                handle.seek(start)
                return handle.read(min(end_inclusive, size - 1) - start + 1)
        except FileNotFoundError as e:
            raise _missing(sha256) from e

    def verify(self, sha256: str) -> bool:
        """Return whether the stored bytes still hash to their name; raises NotFoundError."""
        digest = hashlib.sha256()
        try:
            with self.path(sha256).open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    digest.update(chunk)
        except FileNotFoundError as e:
            raise _missing(sha256) from e
        return digest.hexdigest() == sha256

    def delete(self, sha256: str) -> bool:
        """Remove the blob; return False when it was not there."""
        target = self.path(sha256)
        try:
            target.unlink()
        except FileNotFoundError:
            return False
        fsync_directory(target.parent)
        return True

    def remove_temp_files(self, min_age_s: float = 0.0) -> int:
        """Delete temp files a crash left behind in the fan-out dirs; return how many.

        Call only while nothing writes blobs (`serve` does at start): a put in progress has
        a temp file of the same form. Replicas sharing the directory pass `min_age_s`, which
        spares the files written to recently (by another replica's push in progress).
        """
        removed = 0
        cutoff = time.time() - min_age_s
        for directory in self.root.glob("??"):
            # `.tmp-*` is what releases before the shared write helper left behind.
            for temp in directory.glob(f"{_LEGACY_TEMP_PREFIX}*"):
                try:
                    if temp.stat().st_mtime > cutoff:
                        continue
                except FileNotFoundError:  # its writer finished, or another replica removed it
                    continue
                temp.unlink(missing_ok=True)
                fsync_directory(directory)
                removed += 1
            removed += len(remove_temp_files(directory, min_age_s))
        return removed

    def _make_fanout_dir(self, directory: Path) -> None:
        if directory.is_dir():
            return
        directory.mkdir(parents=True, exist_ok=True)
        fsync_directory(directory.parent)  # so the new directory's entry survives power loss


def _missing(sha256: str) -> NotFoundError:
    return NotFoundError(f"no blob {sha256}")
