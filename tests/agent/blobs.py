"""Artifacts made up for the fetch tests: random bytes, their chunks and signed descriptor."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from edge_protocol import Artifact, Topics

CHUNK = 1024
N_CHUNKS = 12
DATA_SIZE = (N_CHUNKS - 1) * CHUNK + 300
TOPICS = Topics()
DEVICE, PASSWORD = "dev-a", "dev-a-secret"


@dataclass(frozen=True)
class Blob:
    data: bytes
    artifact: Artifact

    def chunk(self, index: int) -> bytes:
        start = index * self.artifact.chunk_size
        return self.data[start : start + self.artifact.chunk_length(index)]

    def topic(self, index: int) -> str:
        return TOPICS.artifact_chunk(self.artifact.sha256, index)


def make_blob(size: int = DATA_SIZE) -> Blob:
    data = os.urandom(size)  # a fresh artifact per test: no retained chunk leaks between tests
    return Blob(data, Artifact.describe(data, CHUNK))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
