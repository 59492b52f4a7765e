"""Content-addressed model files and resumable partial downloads in the agent's state directory.

Layout: `models/{sha256}.onnx` holds verified models; `downloads/{sha256}.part` (preallocated to
the artifact's size) and `downloads/{sha256}.bitmap` (which chunks are on disk) hold a download
in progress. Every write is durable: chunk bytes are fsynced before the bitmap that claims them
is atomically replaced (temp file, fsync, `os.replace`, fsync the directory), so after a crash
at any instant the bitmap never claims a chunk whose bytes are not on disk.

Every method blocks on disk I/O: the agent calls them through `asyncio.to_thread`.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import Any, Protocol

from edge_agent.errors import DiskFullError, DownloadIncompleteError, InvalidDigestError
from edge_common.files import TEMP_SUFFIX, fsync_directory, write_atomic
from edge_protocol import Artifact, ArtifactVerifier, RejectedError
from edge_protocol.fields import SHA256_PATTERN

MODELS_DIR = "models"
DOWNLOADS_DIR = "downloads"
MODEL_SUFFIX = ".onnx"
PART_SUFFIX = ".part"
BITMAP_SUFFIX = ".bitmap"
BITMAP_FORMAT = 1
FREE_SPACE_FACTOR = 2  # free space needed, as a multiple of the artifact size
HASH_BLOCK_BYTES = 1024 * 1024  # finalize hashes the file in blocks, never all in memory


class DiskUsage(Protocol):
    """The part of `shutil.disk_usage`'s result the store reads."""

    @property
    def free(self) -> int:
        """Bytes available to this process."""
        ...


class ModelStore:
    """The model files and partial downloads under one state directory (blocking methods)."""

    def __init__(
        self, state_dir: Path, *, disk_usage: Callable[[Path], DiskUsage] = shutil.disk_usage
    ) -> None:
        self.state_dir = state_dir
        self.models_dir = state_dir / MODELS_DIR
        self.downloads_dir = state_dir / DOWNLOADS_DIR
        self._disk_usage = disk_usage
        for directory in (self.models_dir, self.downloads_dir):
            directory.mkdir(parents=True, exist_ok=True)

    def model_path(self, sha256: str) -> Path:
        """Return where the verified model `sha256` is (or would be) stored."""
        return self.models_dir / f"{_checked(sha256)}{MODEL_SUFFIX}"

    def has_model(self, sha256: str) -> bool:
        """Return whether the verified model `sha256` is in the store (blocking)."""
        return self.model_path(sha256).is_file()

    def check_free_space(self, size: int) -> None:
        """Raise DiskFullError unless the state dir has twice `size` bytes free (blocking)."""
        free = self._disk_usage(self.state_dir).free
        needed = FREE_SPACE_FACTOR * size
        if free < needed:
            raise DiskFullError(
                f"{self.state_dir} has {free} bytes free; a model of {size} bytes needs "
                f"{needed} (twice its size)"
            )

    def open_download(self, artifact: Artifact) -> PartialDownload:
        """Resume the download of `artifact`, or start over if the files differ (blocking)."""
        _checked(artifact.sha256)
        return PartialDownload(self, artifact)

    def retain(self, keep: Collection[str]) -> list[str]:
        """Delete models and downloads whose sha256 is not in `keep`; return those (blocking)."""
        wanted = {_checked(sha256) for sha256 in keep}
        removed: set[str] = set()
        for directory, suffixes in (
            (self.models_dir, (MODEL_SUFFIX,)),
            (self.downloads_dir, (PART_SUFFIX, BITMAP_SUFFIX)),
        ):
            for path in directory.iterdir():
                if path.suffix in suffixes and _is_digest(path.stem) and path.stem not in wanted:
                    path.unlink(missing_ok=True)
                    removed.add(path.stem)
            fsync_directory(directory)
        return sorted(removed)

    def remove_debris(self) -> list[Path]:
        """Delete temp files a crash left behind, never a resumable .part/.bitmap (blocking)."""
        removed = []
        for directory in (self.models_dir, self.downloads_dir):
            for path in directory.iterdir():
                if path.name.endswith(TEMP_SUFFIX) and path.is_file():
                    path.unlink(missing_ok=True)
                    removed.append(path)
            fsync_directory(directory)
        return sorted(removed)


class PartialDownload:
    """One artifact's chunks on disk and the persisted bitmap of which are there (blocking)."""

    def __init__(self, store: ModelStore, artifact: Artifact) -> None:
        self.artifact = artifact
        self._store = store
        self._verifier = ArtifactVerifier(artifact)
        self._part = store.downloads_dir / f"{artifact.sha256}{PART_SUFFIX}"
        self._bitmap = store.downloads_dir / f"{artifact.sha256}{BITMAP_SUFFIX}"
        # write_chunk may run in several worker threads; the bitmap must be updated by one.
        self._lock = threading.Lock()
        have = self._load_bitmap()
        if have is None:
            have = self._start_over()
        self._have = have
        self._count = sum(bin(byte).count("1") for byte in have)

    @property
    def have_count(self) -> int:
        """How many chunks are on disk."""
        return self._count

    @property
    def complete(self) -> bool:
        """Whether every chunk is on disk."""
        return self._count == len(self.artifact.chunks)

    def has(self, index: int) -> bool:
        """Whether chunk `index` is on disk (False for an index out of range)."""
        return 0 <= index < len(self.artifact.chunks) and self._has(index)

    def missing(self) -> list[int]:
        """Return the indices of the chunks not yet on disk, in order."""
        return [i for i in range(len(self.artifact.chunks)) if not self._has(i)]

    def write_chunk(self, index: int, data: bytes) -> bool:
        """Verify and store chunk `index`; return False if it was already there (blocking)."""
        # A chunk that fails verification raises here and never touches the disk.
        self._verifier.verify_chunk(index, data)
        with self._lock:
            if self._has(index):
                return False
            with _disk_full_as_error(self._part):
                fd = os.open(self._part, os.O_WRONLY)
                try:
                    os.pwrite(fd, data, index * self.artifact.chunk_size)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                # Only now, with the bytes durable, may the bitmap claim them.
                have = bytearray(self._have)
                have[index // 8] |= 1 << (index % 8)
                self._save_bitmap(have)
            self._have = have
            self._count += 1
            return True

    def finalize(self) -> Path:
        """Verify the whole file and move it to the models dir; on mismatch delete it (blocking)."""
        with self._lock:
            if not self.complete:
                raise DownloadIncompleteError(
                    f"download {self.artifact.sha256} still lacks {len(self.missing())} chunk(s)"
                )
            digest, size = _hash_file(self._part)
            try:
                self._verifier.verify_complete(digest, size)
            except RejectedError:
                self._remove_files()
                raise
            target = self._store.model_path(self.artifact.sha256)
            os.replace(self._part, target)
            fsync_directory(target.parent)
            self._bitmap.unlink(missing_ok=True)
            fsync_directory(self._bitmap.parent)
            return target

    def discard(self) -> None:
        """Delete the partial file and its bitmap (blocking)."""
        with self._lock:
            self._remove_files()

    def _has(self, index: int) -> bool:
        return bool(self._have[index // 8] & (1 << (index % 8)))

    def _start_over(self) -> bytearray:
        self._remove_files()
        have = bytearray(_bitmap_length(len(self.artifact.chunks)))
        with _disk_full_as_error(self._part):
            fd = os.open(self._part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                _preallocate(fd, self.artifact.size)
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_directory(self._part.parent)
            self._save_bitmap(have)
        return have

    def _remove_files(self) -> None:
        self._bitmap.unlink(missing_ok=True)
        self._part.unlink(missing_ok=True)
        fsync_directory(self._part.parent)

    def _identity(self) -> dict[str, Any]:
        # The chunk list's digest ties the bitmap to one chunking of one artifact.
        chunks = hashlib.sha256("\n".join(self.artifact.chunks).encode()).hexdigest()
        return {
            "format": BITMAP_FORMAT,
            "sha256": self.artifact.sha256,
            "size": self.artifact.size,
            "chunk_size": self.artifact.chunk_size,
            "chunks": chunks,
        }

    def _save_bitmap(self, bits: bytearray) -> None:
        body = {**self._identity(), "have": bits.hex()}
        write_atomic(self._bitmap, json.dumps(body, sort_keys=True).encode())

    def _load_bitmap(self) -> bytearray | None:
        """Return the persisted bitmap, or None when it is absent, corrupt or for another file."""
        try:
            body = json.loads(self._bitmap.read_bytes())
            part_size = self._part.stat().st_size
        except (OSError, ValueError):
            return None
        if part_size != self.artifact.size or not isinstance(body, dict):
            return None
        bits = body.pop("have", None)
        if body != self._identity():
            return None
        return _parse_bits(bits, len(self.artifact.chunks))


def _parse_bits(text: object, count: int) -> bytearray | None:
    """Decode a hex bitmap; None unless its length and padding bits fit `count` chunks."""
    if not isinstance(text, str):
        return None
    try:
        bits = bytearray.fromhex(text)
    except ValueError:
        return None
    if len(bits) != _bitmap_length(count) or (count % 8 and bits[-1] >> (count % 8)):
        return None
    return bits


def _bitmap_length(count: int) -> int:
    return (count + 7) // 8


def _is_digest(name: str) -> bool:
    return SHA256_PATTERN.fullmatch(name) is not None


def _checked(sha256: str) -> str:
    """Return `sha256` if it is 64 lowercase hex characters; it becomes part of a file name."""
    if not _is_digest(sha256):
        raise InvalidDigestError(
            f"{sha256!r} is not a sha256 (64 lowercase hex characters); refusing it as a file name"
        )
    return sha256


def _hash_file(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK_BYTES):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def _preallocate(fd: int, size: int) -> None:
    """Reserve `size` bytes so a full disk fails now, with one clear error, not mid-download."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(fd, size)  # a file system without fallocate: a sparse file still works


@contextlib.contextmanager
def _disk_full_as_error(path: Path) -> Iterator[None]:
    """Turn ENOSPC/EDQUOT into DiskFullError, the cause the agent reports upstream."""
    try:
        yield
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"no space left for {path}: {e.strerror}") from e
        raise
