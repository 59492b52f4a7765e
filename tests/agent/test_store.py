"""The model store on real files: durable chunk writes, resume, verification, clean-up."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import pytest

from edge_agent.errors import DiskFullError, DownloadIncompleteError, InvalidDigestError
from edge_agent.storage.store import ModelStore, PartialDownload
from edge_protocol import Artifact
from edge_protocol.errors import (
    ArtifactHashError,
    ChunkHashError,
    ChunkIndexError,
    ChunkSizeError,
    RejectedError,
    SizeExceededError,
)

CHUNK = 1024
DATA_SIZE = 11 * CHUNK + 300  # 12 chunks, the last one short


class Blob(NamedTuple):
    data: bytes
    artifact: Artifact

    def chunk(self, index: int) -> bytes:
        start = index * self.artifact.chunk_size
        return self.data[start : start + self.artifact.chunk_length(index)]


@pytest.fixture
def blob() -> Blob:
    data = os.urandom(DATA_SIZE)
    return Blob(data, Artifact.describe(data, CHUNK))


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "state")


def write_all(download: PartialDownload, blob: Blob) -> None:
    for index in download.missing():
        assert download.write_chunk(index, blob.chunk(index))


def part_path(store: ModelStore, sha256: str) -> Path:
    return store.downloads_dir / f"{sha256}.part"


def bitmap_path(store: ModelStore, sha256: str) -> Path:
    return store.downloads_dir / f"{sha256}.bitmap"


def test_a_complete_download_finalizes_to_the_model_file(store: ModelStore, blob: Blob) -> None:
    download = store.open_download(blob.artifact)
    assert download.missing() == list(range(12))
    assert part_path(store, blob.artifact.sha256).stat().st_size == DATA_SIZE  # preallocated
    for index in reversed(range(12)):  # any order: each chunk goes to its own offset
        assert download.write_chunk(index, blob.chunk(index))
    assert download.complete
    assert download.have_count == 12

    path = download.finalize()

    assert path == store.model_path(blob.artifact.sha256)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == blob.artifact.sha256
    assert store.has_model(blob.artifact.sha256)
    assert list(store.downloads_dir.iterdir()) == []


def test_a_chunk_already_present_is_not_rewritten(store: ModelStore, blob: Blob) -> None:
    download = store.open_download(blob.artifact)
    assert download.write_chunk(3, blob.chunk(3))
    files = (part_path(store, blob.artifact.sha256), bitmap_path(store, blob.artifact.sha256))
    before = [f.stat().st_mtime_ns for f in files]

    assert download.write_chunk(3, blob.chunk(3)) is False

    assert [f.stat().st_mtime_ns for f in files] == before
    assert download.have_count == 1


def test_a_reopened_download_resumes_with_the_chunks_on_disk(tmp_path: Path, blob: Blob) -> None:
    download = ModelStore(tmp_path).open_download(blob.artifact)
    for index in (0, 1, 5, 11):
        download.write_chunk(index, blob.chunk(index))

    # A new store and download object: what an agent restart sees.
    resumed = ModelStore(tmp_path).open_download(blob.artifact)

    assert resumed.missing() == [2, 3, 4, 6, 7, 8, 9, 10]
    write_all(resumed, blob)
    assert resumed.finalize().read_bytes() == blob.data


def test_a_chunk_written_without_its_bitmap_update_counts_as_missing(
    tmp_path: Path, blob: Blob
) -> None:
    store = ModelStore(tmp_path)
    download = store.open_download(blob.artifact)
    download.write_chunk(0, blob.chunk(0))
    # The crash window: chunk 1's bytes reached the .part, the bitmap update never happened.
    fd = os.open(part_path(store, blob.artifact.sha256), os.O_WRONLY)
    try:
        os.pwrite(fd, blob.chunk(1), CHUNK)
        os.fsync(fd)
    finally:
        os.close(fd)

    resumed = ModelStore(tmp_path).open_download(blob.artifact)

    assert resumed.missing() == list(range(1, 12))
    assert resumed.write_chunk(1, blob.chunk(1)) is True


def _other_chunking(store: ModelStore, blob: Blob) -> Artifact:
    return Artifact.describe(blob.data, CHUNK // 2)  # same file, other chunk list


def _other_size(store: ModelStore, blob: Blob) -> Artifact:
    return replace(blob.artifact, size=DATA_SIZE - 1)


def _garbage_bitmap(store: ModelStore, blob: Blob) -> Artifact:
    bitmap_path(store, blob.artifact.sha256).write_bytes(b"\x00not json")
    return blob.artifact


def _bitmap_with_padding_bits(store: ModelStore, blob: Blob) -> Artifact:
    path = bitmap_path(store, blob.artifact.sha256)
    body = json.loads(path.read_bytes())
    body["have"] = "0180"  # bit 15 set, but only 12 chunks exist
    path.write_text(json.dumps(body))
    return blob.artifact


def _truncated_part(store: ModelStore, blob: Blob) -> Artifact:
    os.truncate(part_path(store, blob.artifact.sha256), CHUNK)
    return blob.artifact


def _missing_part(store: ModelStore, blob: Blob) -> Artifact:
    part_path(store, blob.artifact.sha256).unlink()
    return blob.artifact


@pytest.mark.parametrize(
    "change",
    [
        _other_chunking,
        _other_size,
        _garbage_bitmap,
        _bitmap_with_padding_bits,
        _truncated_part,
        _missing_part,
    ],
)
def test_a_download_that_does_not_match_starts_over(
    tmp_path: Path, blob: Blob, change: Callable[[ModelStore, Blob], Artifact]
) -> None:
    store = ModelStore(tmp_path)
    download = store.open_download(blob.artifact)
    download.write_chunk(0, blob.chunk(0))
    artifact = change(store, blob)

    resumed = ModelStore(tmp_path).open_download(artifact)

    assert resumed.have_count == 0
    assert resumed.missing() == list(range(len(artifact.chunks)))
    assert part_path(store, blob.artifact.sha256).stat().st_size == artifact.size


def _flip_first_byte(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


@pytest.mark.parametrize(
    ("index", "mangle", "error"),
    [
        (2, _flip_first_byte, ChunkHashError),
        (2, lambda d: d + b"x", SizeExceededError),
        (11, lambda d: d + b"x", SizeExceededError),
        (2, lambda d: d[:-1], ChunkSizeError),
        (12, lambda d: d, ChunkIndexError),
    ],
)
def test_a_bad_chunk_is_refused_before_it_touches_the_disk(
    tmp_path: Path,
    blob: Blob,
    index: int,
    mangle: Callable[[bytes], bytes],
    error: type[RejectedError],
) -> None:
    store = ModelStore(tmp_path)
    download = store.open_download(blob.artifact)
    bitmap_before = bitmap_path(store, blob.artifact.sha256).read_bytes()

    with pytest.raises(error):
        download.write_chunk(index, mangle(blob.chunk(min(index, 11))))

    assert part_path(store, blob.artifact.sha256).read_bytes() == bytes(DATA_SIZE)
    assert bitmap_path(store, blob.artifact.sha256).read_bytes() == bitmap_before
    assert download.have_count == 0
    assert ModelStore(tmp_path).open_download(blob.artifact).have_count == 0


def test_a_wrong_whole_file_hash_fails_finalize_and_removes_the_files(
    store: ModelStore, blob: Blob
) -> None:
    # Chunk hashes all match, but the release's sha256 names another file.
    wrong = replace(blob.artifact, sha256=hashlib.sha256(b"another file").hexdigest())
    download = store.open_download(wrong)
    write_all(download, blob)

    with pytest.raises(ArtifactHashError):
        download.finalize()

    assert list(store.downloads_dir.iterdir()) == []
    assert not store.has_model(wrong.sha256)
    assert list(store.models_dir.iterdir()) == []


def test_finalize_refuses_an_incomplete_download(store: ModelStore, blob: Blob) -> None:
    download = store.open_download(blob.artifact)
    download.write_chunk(0, blob.chunk(0))

    with pytest.raises(DownloadIncompleteError, match="11 chunk"):
        download.finalize()


def test_discard_removes_the_partial_files(store: ModelStore, blob: Blob) -> None:
    download = store.open_download(blob.artifact)
    download.write_chunk(0, blob.chunk(0))

    download.discard()

    assert list(store.downloads_dir.iterdir()) == []


class FakeUsage(NamedTuple):
    """The shape of shutil.disk_usage's answer."""

    total: int
    used: int
    free: int


def test_check_free_space_needs_twice_the_artifact_size(tmp_path: Path) -> None:
    asked: list[Path] = []

    def disk_usage(path: Path) -> FakeUsage:
        asked.append(path)
        return FakeUsage(total=10_000, used=8_000, free=2_000)

    store = ModelStore(tmp_path, disk_usage=disk_usage)
    store.check_free_space(1_000)
    with pytest.raises(DiskFullError, match="2000 bytes free"):
        store.check_free_space(1_001)
    assert asked == [tmp_path, tmp_path]


def test_check_free_space_reads_the_real_file_system(store: ModelStore) -> None:
    store.check_free_space(1)
    with pytest.raises(DiskFullError):
        store.check_free_space(2**62)


def test_retain_keeps_exactly_the_given_models_and_downloads(store: ModelStore, blob: Blob) -> None:
    shas = [hashlib.sha256(bytes([i])).hexdigest() for i in range(4)]
    for sha in shas:
        store.model_path(sha).write_bytes(b"model")
    store.open_download(blob.artifact).write_chunk(0, blob.chunk(0))
    unrelated = store.models_dir / "README"
    unrelated.write_text("not ours")

    removed = store.retain({shas[0], shas[2]})

    assert removed == sorted([shas[1], shas[3], blob.artifact.sha256])
    assert sorted(p.name for p in store.models_dir.iterdir()) == sorted(
        [f"{shas[0]}.onnx", f"{shas[2]}.onnx", "README"]
    )
    assert list(store.downloads_dir.iterdir()) == []
    assert store.retain({shas[0], shas[2]}) == []


def test_retain_keeps_the_download_in_progress(store: ModelStore, blob: Blob) -> None:
    download = store.open_download(blob.artifact)
    download.write_chunk(0, blob.chunk(0))

    assert store.retain([blob.artifact.sha256]) == []

    assert ModelStore(store.state_dir).open_download(blob.artifact).have_count == 1


def test_remove_debris_removes_temp_files_only(store: ModelStore, blob: Blob) -> None:
    sha = blob.artifact.sha256
    download = store.open_download(blob.artifact)
    download.write_chunk(0, blob.chunk(0))
    debris = [
        store.downloads_dir / f".{sha}.bitmap.k2j4h1.tmp",
        store.models_dir / f".{sha}.onnx.x8a9.tmp",
    ]
    for path in debris:
        path.write_bytes(b"half written")
    model = store.model_path(hashlib.sha256(b"m").hexdigest())
    model.write_bytes(b"model")

    assert store.remove_debris() == sorted(debris)

    assert not any(path.exists() for path in debris)
    assert model.exists()
    assert ModelStore(store.state_dir).open_download(blob.artifact).have_count == 1


@pytest.mark.parametrize(
    "name",
    ["../../etc/passwd", "A" * 64, "a" * 63, "a" * 65, "g" * 64, "", "a" * 63 + "/"],
)
def test_names_that_are_not_a_sha256_are_refused(store: ModelStore, name: str) -> None:
    with pytest.raises(InvalidDigestError):
        store.model_path(name)
    with pytest.raises(InvalidDigestError):
        store.has_model(name)
    with pytest.raises(InvalidDigestError):
        store.retain([name])
    with pytest.raises(InvalidDigestError):
        store.open_download(Artifact(name, 1, 1, ("a" * 64,)))
