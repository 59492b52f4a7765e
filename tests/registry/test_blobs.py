"""BlobStore on a real directory: layout, atomic and idempotent puts, ranges, refused names."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from pathlib import Path

import pytest

from edge_common.files import TEMP_SUFFIX
from model_registry.errors import InvalidInputError, NotFoundError
from model_registry.storage import BlobStore

DATA = bytes(range(256)) * 40  # 10240 bytes, every byte value
SHA = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_put_returns_the_sha256_and_fans_out_by_its_first_two_chars(store: BlobStore) -> None:
    assert store.put(DATA) == SHA
    assert store.path(SHA) == store.root / SHA[:2] / SHA
    assert store.path(SHA).read_bytes() == DATA
    assert (store.exists(SHA), store.size(SHA), store.read(SHA)) == (True, len(DATA), DATA)
    assert store.path(SHA).stat().st_mode & 0o777 == 0o644


def test_put_of_empty_bytes(store: BlobStore) -> None:
    sha = store.put(b"")
    assert sha == hashlib.sha256(b"").hexdigest()
    assert store.read(sha) == b""


def test_put_is_idempotent_and_leaves_no_temp_files(store: BlobStore) -> None:
    other = store.put(b"other")
    assert store.put(DATA) == SHA
    first = store.path(SHA).stat().st_mtime_ns
    assert store.put(DATA) == SHA
    assert store.path(SHA).stat().st_mtime_ns == first  # not rewritten
    assert all_files(store.root) == sorted([store.path(SHA), store.path(other)])


def test_put_repairs_a_truncated_blob(store: BlobStore) -> None:
    store.put(DATA)
    store.path(SHA).write_bytes(DATA[:10])
    store.put(DATA)
    assert store.read(SHA) == DATA


def test_put_writes_durably(store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    store.put(DATA)
    # the file, then the new fan-out dir's parent, then the fan-out dir after the rename
    assert synced == ["dir", "file", "dir"]


def test_a_failed_put_leaves_neither_blob_nor_temp_file(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing_replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="No space"):
        store.put(DATA)
    assert not store.exists(SHA)
    assert all_files(store.root) == []


def test_remove_temp_files_clears_crash_leftovers(store: BlobStore) -> None:
    store.put(DATA)
    leftover = store.path(SHA).parent / ".tmp-crashed"
    leftover.write_bytes(b"half")
    assert store.remove_temp_files() == 1
    assert all_files(store.root) == [store.path(SHA)]


def test_replicas_sharing_the_directory_spare_recent_unfinished_writes(store: BlobStore) -> None:
    """Another replica may be writing the recent ones; only an hour-old one is a crash's."""
    store.put(DATA)
    directory = store.path(SHA).parent
    in_progress = [directory / ".tmp-pushing", directory / f".{SHA}.x1y2{TEMP_SUFFIX}"]
    crashed = [directory / ".tmp-crashed", directory / f".{SHA}.z3w4{TEMP_SUFFIX}"]
    for path in (*in_progress, *crashed):
        path.write_bytes(b"half")
    two_hours_ago = time.time() - 7200
    for path in crashed:
        os.utime(path, (two_hours_ago, two_hours_ago))
    assert store.remove_temp_files(min_age_s=3600) == len(crashed)
    assert sorted(all_files(store.root)) == sorted([store.path(SHA), *in_progress])


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, 0, DATA[:1]),
        (0, len(DATA) - 1, DATA),
        (100, 199, DATA[100:200]),
        (len(DATA) - 1, len(DATA) - 1, DATA[-1:]),
        (10000, 10**9, DATA[10000:]),  # clipped to the end, as an HTTP range is
    ],
)
def test_read_range(store: BlobStore, start: int, end: int, expected: bytes) -> None:
    store.put(DATA)
    assert store.read_range(SHA, start, end) == expected


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (-1, 5, "bad byte range"),
        (10, 9, "bad byte range"),
        (len(DATA), len(DATA) + 5, "starts past the end"),
    ],
)
def test_bad_ranges_are_refused(store: BlobStore, start: int, end: int, message: str) -> None:
    store.put(DATA)
    with pytest.raises(InvalidInputError, match=message):
        store.read_range(SHA, start, end)


@pytest.mark.parametrize(
    "name",
    [
        "../" + "a" * 61,
        "ab/../../etc/passwd",
        "/etc/passwd",
        "..",
        "",
        SHA.upper(),
        SHA[:63],
        SHA + "0",
        SHA[:62] + "/x",
        SHA + "\n",
        "g" * 64,
    ],
)
def test_names_other_than_lowercase_sha256_hex_are_refused(store: BlobStore, name: str) -> None:
    store.put(DATA)
    for method in (store.path, store.exists, store.size, store.read, store.verify, store.delete):
        with pytest.raises(InvalidInputError, match="not a SHA-256 hex digest"):
            method(name)
    with pytest.raises(InvalidInputError):
        store.read_range(name, 0, 1)
    assert store.exists(SHA)


def test_missing_blobs(store: BlobStore) -> None:
    assert not store.exists(SHA)
    for method in (store.size, store.read, store.verify):
        with pytest.raises(NotFoundError, match=f"no blob {SHA}"):
            method(SHA)
    with pytest.raises(NotFoundError):
        store.read_range(SHA, 0, 1)


def test_verify_detects_a_changed_file(store: BlobStore) -> None:
    store.put(DATA)
    assert store.verify(SHA)
    corrupted = bytearray(DATA)
    corrupted[5000] ^= 0xFF
    store.path(SHA).write_bytes(bytes(corrupted))
    assert not store.verify(SHA)
    assert store.read(SHA) == bytes(corrupted)  # reads trust the disk; verify is the check


def test_delete(store: BlobStore) -> None:
    store.put(DATA)
    assert store.delete(SHA) is True
    assert not store.exists(SHA)
    assert store.delete(SHA) is False


def test_put_with_the_digest_already_known_does_not_hash_again(
    store: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_args: object) -> None:
        raise AssertionError("hashed again")

    monkeypatch.setattr("model_registry.storage.blobs.hashlib.sha256", refuse)
    assert store.put(DATA, SHA) == SHA
    assert store.read(SHA) == DATA
