"""Builds signed protocol documents for tests, the way a registry would.

A small stand-in for the registry's signing side that implements the real formats with the
real keys, so trust tests attack genuine documents (python-tuf's RepositorySimulator idea).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from edge_protocol import (
    Artifact,
    AssignedModel,
    Assignment,
    Envelope,
    ModelIO,
    Release,
    RoleKeys,
    Root,
    SelfTest,
    SigningKey,
    TensorData,
    TensorSpec,
)

NOW = datetime(2026, 6, 1, 12, 0, 0, tzinfo=UTC)
DEVICE = "dev-001"
MODEL = "iris"


class FrozenClock:
    """A clock tests move by hand."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> None:
        self.now += delta


def sign(signed: dict[str, Any], *keys: SigningKey) -> bytes:
    """Return envelope bytes of `signed` signed by every key given."""
    envelope = Envelope(signed=signed)
    for key in keys:
        envelope = envelope.sign(key)
    return envelope.to_bytes()


def floats_le(values: list[float]) -> bytes:
    """Pack floats as little-endian FP32 bytes."""
    return struct.pack(f"<{len(values)}f", *values)


@dataclass
class Registry:
    """Root and release keys plus builders for root, release and assignment documents."""

    root_keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.generate()])
    release_keys: list[SigningKey] = field(default_factory=lambda: [SigningKey.generate()])
    root_threshold: int = 1
    release_threshold: int = 1
    root_version: int = 1

    def root(self, expires: datetime = NOW + timedelta(days=365)) -> Root:
        """The root this registry would publish now."""
        keys = {k.keyid: k.public_key for k in (*self.root_keys, *self.release_keys)}
        roles = {
            "root": RoleKeys(tuple(k.keyid for k in self.root_keys), self.root_threshold),
            "release": RoleKeys(tuple(k.keyid for k in self.release_keys), self.release_threshold),
        }
        return Root(version=self.root_version, expires=expires, keys=keys, roles=roles)

    def root_bytes(self, *signers: SigningKey, **kwargs: Any) -> bytes:
        """The current root signed by `signers` (default: all root keys)."""
        return sign(self.root(**kwargs).to_dict(), *(signers or self.root_keys))

    def artifact(self, size: int = 1000, chunk_size: int = 256) -> tuple[bytes, Artifact]:
        """A deterministic artifact payload and its descriptor."""
        data = bytes((i * 7 + size) % 251 for i in range(size))
        return data, Artifact.describe(data, chunk_size)

    def release(
        self, version: int = 1, artifact: Artifact | None = None, **changes: Any
    ) -> Release:
        """A release of MODEL with a tiny self-test."""
        if artifact is None:
            artifact = self.artifact()[1]
        tensor = TensorSpec("input", "FP32", (-1, 2))
        release = Release(
            model=MODEL,
            version=version,
            label=f"v{version}",
            created=NOW,
            expires=NOW + timedelta(days=30),
            artifact=artifact,
            io=ModelIO(inputs=(tensor,), outputs=(TensorSpec("output", "FP32", (-1, 1)),)),
            selftest=SelfTest(
                inputs=(TensorData("input", "FP32", (1, 2), floats_le([1.0, 2.0])),),
                outputs=(TensorData("output", "FP32", (1, 1), floats_le([0.5])),),
            ),
            build={"source": "onnx", "quantization": "none"},
        )
        return replace(release, **changes)

    def release_bytes(self, release: Release, *signers: SigningKey) -> bytes:
        """`release` signed by `signers` (default: all release keys)."""
        return sign(release.to_dict(), *(signers or self.release_keys))

    def assignment(
        self, seq: int = 1, release: Release | None = None, **changes: Any
    ) -> Assignment:
        """An assignment of `release` (default: release v1) to DEVICE."""
        release = release or self.release()
        pinned = AssignedModel(release.version, release.artifact.sha256, release.artifact.size)
        assignment = Assignment(
            device_id=DEVICE,
            seq=seq,
            created=NOW,
            expires=NOW + timedelta(days=7),
            models={release.model: pinned},
        )
        return replace(assignment, **changes)

    def assignment_bytes(self, assignment: Assignment, *signers: SigningKey) -> bytes:
        """`assignment` signed by `signers` (default: all release keys)."""
        return sign(assignment.to_dict(), *(signers or self.release_keys))
