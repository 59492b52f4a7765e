"""Two of the three signed document types, root and release (docs/protocol.md); the
assignment is in edge_protocol/assignment.py.

Each is a frozen dataclass with a strict `from_dict` (every field checked, the error naming
its path) and a `to_dict` that gives back the same object, unknown fields included, so a newer
registry can add fields without breaking older agents.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Self

from edge_protocol.errors import KeyFormatError, MetadataFormatError
from edge_protocol.fields import FieldReader, check_spec_version, format_time
from edge_protocol.keys import PublicKey
from edge_protocol.profile import Profile
from edge_protocol.tensors import DATATYPES, ModelIO, SelfTest, TensorData, TensorSpec

# Re-exported: importers of the release document's parts find them here, as before.
__all__ = [
    "DATATYPES", "MAX_CHUNK_SIZE", "MAX_KEYS", "ONNX_MEDIA_TYPE", "SPEC_VERSION", "Artifact",
    "ModelIO", "Release", "RoleKeys", "Root", "SelfTest",
    "TensorData", "TensorSpec",
]  # fmt: skip

SPEC_VERSION = "1.0"  # of roots and releases; assignments: edge_protocol/assignment.py
SPEC_MAJORS = (1,)
ONNX_MEDIA_TYPE = "application/vnd.onnx"
ROLE_NAMES = ("root", "release")

MAX_CHUNK_SIZE = 16 * 1024 * 1024  # one MQTT message; bounds what a device buffers per chunk
MAX_CHUNKS = 16_384
MAX_KEYS = 64


def _check_spec_version(reader: FieldReader) -> str:
    return check_spec_version(reader, SPEC_MAJORS)


@dataclass(frozen=True)
class RoleKeys:
    """The keys allowed to sign for a role and how many of them must."""

    keyids: tuple[str, ...]
    threshold: int
    unrecognized_fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> Self:
        """Parse and validate a role object."""
        r = FieldReader(obj, path)
        raw_ids = r.array("keyids", max_items=MAX_KEYS)
        keyids = tuple(FieldReader({"keyid": k}, r.path("keyids")).sha256("keyid") for k in raw_ids)
        if len(set(keyids)) != len(keyids):
            raise MetadataFormatError(f"{r.path('keyids')}: key ids must be unique")
        threshold = r.integer("threshold", minimum=1)
        if threshold > len(keyids):
            raise MetadataFormatError(
                f"{r.path('threshold')}: {threshold} exceeds the {len(keyids)} key(s) listed"
            )
        return cls(keyids, threshold, r.unrecognized())

    def to_dict(self) -> dict[str, Any]:
        """Return the wire object."""
        return {
            **self.unrecognized_fields,
            "keyids": list(self.keyids),
            "threshold": self.threshold,
        }


@dataclass(frozen=True)
class Root:
    """The trust anchor: which keys sign for which role, and until when."""

    TYPE: ClassVar[str] = "root"
    version: int
    expires: datetime
    keys: dict[str, PublicKey]
    roles: dict[str, RoleKeys]
    spec_version: str = SPEC_VERSION
    unrecognized_fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, obj: Any) -> Self:
        """Parse and validate a root `signed` object."""
        r = FieldReader(obj, "root")
        r.constant("_type", cls.TYPE)
        spec_version = _check_spec_version(r)
        keys = _parse_keys(r.obj("keys"), r.path("keys"))
        roles = {
            name: RoleKeys.from_dict(raw, f"{r.path('roles')}.{name}")
            for name, raw in r.obj("roles").items()
        }
        for name in ROLE_NAMES:
            if name not in roles:
                raise MetadataFormatError(f"root.roles.{name}: required role is missing")
        for name, role in roles.items():
            unknown = [k for k in role.keyids if k not in keys]
            if unknown:
                raise MetadataFormatError(f"root.roles.{name}: key id {unknown[0]} is not in keys")
        return cls(
            version=r.integer("version", minimum=1),
            expires=r.time("expires"),
            keys=keys,
            roles=roles,
            spec_version=spec_version,
            unrecognized_fields=r.unrecognized(),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the `signed` object."""
        return {
            **self.unrecognized_fields,
            "_type": self.TYPE,
            "spec_version": self.spec_version,
            "version": self.version,
            "expires": format_time(self.expires),
            "keys": {keyid: key.to_dict() for keyid, key in self.keys.items()},
            "roles": {name: role.to_dict() for name, role in self.roles.items()},
        }

    def role_keys(self, role: str) -> dict[str, PublicKey]:
        """Return the public keys of `role`, by key id."""
        return {keyid: self.keys[keyid] for keyid in self.roles[role].keyids}


def _parse_keys(raw: dict[str, Any], path: str) -> dict[str, PublicKey]:
    if len(raw) > MAX_KEYS:
        raise MetadataFormatError(f"{path}: at most {MAX_KEYS} keys")
    keys: dict[str, PublicKey] = {}
    for keyid, key_obj in raw.items():
        try:
            key = PublicKey.from_dict(key_obj)
        except KeyFormatError as e:
            raise MetadataFormatError(f"{path}.{keyid}: {e}") from e
        if key.keyid != keyid:
            # Binding the id to the key stops one key from being counted under two ids.
            raise MetadataFormatError(f"{path}.{keyid}: key id does not match the key's hash")
        keys[keyid] = key
    return keys


@dataclass(frozen=True)
class Artifact:
    """The model file: its hash, size and the hashes of its fixed-size chunks."""

    sha256: str
    size: int
    chunk_size: int
    chunks: tuple[str, ...]
    media_type: str = ONNX_MEDIA_TYPE
    unrecognized_fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def describe(cls, data: bytes, chunk_size: int) -> Self:
        """Compute the descriptor of `data` split into chunks of `chunk_size` bytes."""
        chunks = tuple(
            hashlib.sha256(data[i : i + chunk_size]).hexdigest()
            for i in range(0, len(data), chunk_size)
        )
        return cls(hashlib.sha256(data).hexdigest(), len(data), chunk_size, chunks)

    @classmethod
    def from_dict(cls, obj: Any, path: str) -> Self:
        """Parse an artifact and check the chunk list is consistent with size and chunk_size."""
        r = FieldReader(obj, path)
        sha256, size = r.sha256("sha256"), r.integer("size", minimum=1)
        chunk_size = r.integer("chunk_size", minimum=1)
        if chunk_size > MAX_CHUNK_SIZE:
            raise MetadataFormatError(f"{r.path('chunk_size')}: at most {MAX_CHUNK_SIZE} bytes")
        raw_chunks = r.array("chunks", max_items=MAX_CHUNKS)
        chunks = tuple(FieldReader({"c": c}, r.path("chunks")).sha256("c") for c in raw_chunks)
        expected = math.ceil(size / chunk_size)
        if len(chunks) != expected:
            raise MetadataFormatError(
                f"{r.path('chunks')}: {len(chunks)} chunk hashes, but size {size} in chunks "
                f"of {chunk_size} needs {expected}"
            )
        media_type = r.string("media_type", max_length=128)
        return cls(sha256, size, chunk_size, chunks, media_type, r.unrecognized())

    def to_dict(self) -> dict[str, Any]:
        """Return the wire object."""
        return {
            **self.unrecognized_fields,
            "sha256": self.sha256,
            "size": self.size,
            "chunk_size": self.chunk_size,
            "chunks": list(self.chunks),
            "media_type": self.media_type,
        }

    def chunk_length(self, index: int) -> int:
        """Return the exact byte length chunk `index` must have."""
        if index < len(self.chunks) - 1:
            return self.chunk_size
        return self.size - self.chunk_size * (len(self.chunks) - 1)


@dataclass(frozen=True)
class Release:
    """One version of one model, as signed by the release role."""

    TYPE: ClassVar[str] = "release"
    model: str
    version: int
    created: datetime
    expires: datetime
    artifact: Artifact
    io: ModelIO
    selftest: SelfTest
    label: str = ""
    build: dict[str, Any] = field(default_factory=dict)
    spec_version: str = SPEC_VERSION
    unrecognized_fields: dict[str, Any] = field(default_factory=dict)
    profile: Profile | None = None  # the reference profile drift is measured against

    @classmethod
    def from_dict(cls, obj: Any) -> Self:
        """Parse and validate a release `signed` object."""
        r = FieldReader(obj, "release")
        r.constant("_type", cls.TYPE)
        io = ModelIO.from_dict(r.raw("io"), r.path("io"))
        raw_profile = r.optional("profile")
        return cls(
            spec_version=_check_spec_version(r),
            model=r.string("model", name=True),
            version=r.integer("version", minimum=1),
            label=r.string("label", max_length=256),
            created=r.time("created"),
            expires=r.time("expires"),
            artifact=Artifact.from_dict(r.raw("artifact"), r.path("artifact")),
            io=io,
            selftest=SelfTest.from_dict(r.raw("selftest"), r.path("selftest")),
            build=r.obj("build"),
            profile=None
            if raw_profile is None
            else Profile.from_dict(raw_profile, r.path("profile"), io.inputs),
            unrecognized_fields=r.unrecognized(),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return the `signed` object."""
        return {
            **self.unrecognized_fields,
            "_type": self.TYPE,
            "spec_version": self.spec_version,
            "model": self.model,
            "version": self.version,
            "label": self.label,
            "created": format_time(self.created),
            "expires": format_time(self.expires),
            "artifact": self.artifact.to_dict(),
            "io": self.io.to_dict(),
            "selftest": self.selftest.to_dict(),
            "build": self.build,
            **({} if self.profile is None else {"profile": self.profile.to_dict()}),
        }
