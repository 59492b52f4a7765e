"""The trust rules: what a device accepts, applied to bytes, with no I/O.

`TrustedState` holds the current root and the last accepted assignment; it walks the root
chain, verifies assignments and releases. `ArtifactVerifier` checks chunks and the whole
artifact against a verified release. Every refusal is a `RejectedError` subclass whose
`reason` is the code published upstream. The caller persists `TrustedState`'s fields.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

from edge_protocol.assignment import AssignedModel, Assignment
from edge_protocol.envelope import MAX_DOCUMENT_BYTES, Envelope
from edge_protocol.errors import (
    ArtifactHashError,
    ChunkHashError,
    ChunkIndexError,
    ChunkSizeError,
    ExpiredError,
    MalformedDocumentError,
    MetadataFormatError,
    ReleaseMismatchError,
    ReplayedAssignmentError,
    RootVersionError,
    SizeExceededError,
    WrongDeviceError,
    WrongTypeError,
)
from edge_protocol.fields import format_time
from edge_protocol.metadata import Artifact, Release, Root

Clock = Callable[[], datetime]
_PINNED_FIELDS = ("model", "version", "sha256", "size")
_Doc = TypeVar("_Doc", Root, Release, Assignment)


def utc_now() -> datetime:
    """Return the current aware UTC time (the default clock)."""
    return datetime.now(UTC)


class TrustedState:
    """The device's trusted root and assignment high-water mark, and the rules that move them."""

    def __init__(
        self,
        root_bytes: bytes,
        *,
        device_id: str,
        assignment_seq: int = 0,
        assignment_digest: str | None = None,
        clock: Clock = utc_now,
        max_document_bytes: int = MAX_DOCUMENT_BYTES,
    ) -> None:
        self.device_id = device_id
        self.assignment_seq = assignment_seq
        self.assignment_digest = assignment_digest
        self._clock = clock
        self._max_bytes = max_document_bytes
        envelope = self._envelope(root_bytes)
        root = _typed(envelope, Root)
        # The anchor is trusted by provisioning, but a corrupt or half-written file must not be.
        _verify_role(envelope, root, "root")
        self.root = root
        self.root_bytes = root_bytes

    def is_stale(self) -> bool:
        """Return whether the trusted root has expired (updates stop until a newer root)."""
        return self._clock() >= self.root.expires

    def update_root(self, data: bytes) -> Root:
        """Accept root N+1: signed by a threshold of root N's root keys and of its own."""
        envelope = self._envelope(data)
        _verify_role(envelope, self.root, "root")
        new_root = _typed(envelope, Root)
        if new_root.version != self.root.version + 1:
            raise RootVersionError(
                f"root version {new_root.version} does not follow trusted version "
                f"{self.root.version}; roots are applied one version at a time"
            )
        _verify_role(envelope, new_root, "root")
        self.root, self.root_bytes = new_root, data
        return new_root

    def verify_assignment(self, data: bytes) -> Assignment:
        """Verify an assignment for this device and advance the seq high-water mark."""
        envelope = self._envelope(data)
        _verify_role(envelope, self.root, "release")
        assignment = _typed(envelope, Assignment)
        self._check_expiry("assignment", assignment.expires)
        if assignment.device_id != self.device_id:
            raise WrongDeviceError(
                f"assignment is for device {assignment.device_id!r}, this is {self.device_id!r}"
            )
        digest = hashlib.sha256(envelope.signed_bytes()).hexdigest()
        is_same_document = (
            assignment.seq == self.assignment_seq and digest == self.assignment_digest
        )
        if assignment.seq <= self.assignment_seq and not is_same_document:
            raise ReplayedAssignmentError(
                f"assignment seq {assignment.seq} is not greater than the accepted "
                f"seq {self.assignment_seq}"
            )
        self.assignment_seq, self.assignment_digest = assignment.seq, digest
        return assignment

    def verify_kept_assignment(self, data: bytes) -> Assignment:
        """Re-verify the accepted assignment the device kept on disk (to resume what it runs).

        Its signature must hold under the trusted root and it must be the very document the
        high-water mark records (its seq and digest): a kept copy that is older, newer or
        altered is refused. Its expiry is not checked: an assignment that expires stops no
        model the device serves, and a restart must not either.
        """
        envelope = self._envelope(data)
        _verify_role(envelope, self.root, "release")
        assignment = _typed(envelope, Assignment)
        if assignment.device_id != self.device_id:
            raise WrongDeviceError(
                f"assignment is for device {assignment.device_id!r}, this is {self.device_id!r}"
            )
        digest = hashlib.sha256(envelope.signed_bytes()).hexdigest()
        if (assignment.seq, digest) != (self.assignment_seq, self.assignment_digest):
            raise ReplayedAssignmentError(
                f"the kept assignment (seq {assignment.seq}) is not the accepted one "
                f"(seq {self.assignment_seq})"
            )
        return assignment

    def verify_release(
        self, data: bytes, model: str, pinned: AssignedModel, *, kept: bool = False
    ) -> Release:
        """Verify a release against the model entry of an accepted assignment.

        `kept`: a release the device stored when it verified it first, read back at a restart;
        like a kept assignment, its expiry no longer stops what it describes from serving.
        """
        envelope = self._envelope(data)
        _verify_role(envelope, self.root, "release")
        release = _typed(envelope, Release)
        if not kept:
            self._check_expiry("release", release.expires)
        wanted = (model, pinned.version, pinned.sha256, pinned.size)
        got = (release.model, release.version, release.artifact.sha256, release.artifact.size)
        for label, expected, actual in zip(_PINNED_FIELDS, wanted, got, strict=True):
            if expected != actual:
                raise ReleaseMismatchError(
                    f"release {label} is {actual!r}, the assignment pins {expected!r}"
                )
        return release

    def _envelope(self, data: bytes) -> Envelope:
        return Envelope.from_bytes(data, max_bytes=self._max_bytes)

    def _check_expiry(self, kind: str, expires: datetime) -> None:
        now = self._clock()
        if now >= self.root.expires:
            raise ExpiredError(
                f"trusted root v{self.root.version} expired at {format_time(self.root.expires)}"
            )
        if now >= expires:
            raise ExpiredError(f"{kind} expired at {format_time(expires)}")


class ArtifactVerifier:
    """Checks chunks and the assembled artifact against a verified release's descriptor."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact

    def verify_chunk(self, index: int, data: bytes) -> None:
        """Check one chunk's index, exact length and hash before it may be written."""
        if not 0 <= index < len(self.artifact.chunks):
            raise ChunkIndexError(
                f"chunk index {index} is outside 0..{len(self.artifact.chunks) - 1}"
            )
        expected = self.artifact.chunk_length(index)
        if len(data) > expected:
            raise SizeExceededError(f"chunk {index} has {len(data)} bytes; at most {expected}")
        if len(data) < expected:
            raise ChunkSizeError(f"chunk {index} has {len(data)} bytes; expected {expected}")
        if hashlib.sha256(data).hexdigest() != self.artifact.chunks[index]:
            raise ChunkHashError(f"chunk {index} does not match its sha256 in the release")

    def verify_complete(self, sha256: str, size: int) -> None:
        """Check the assembled file's digest and size (the caller hashes it, off any loop)."""
        if size > self.artifact.size:
            raise SizeExceededError(
                f"artifact has {size} bytes; the release says {self.artifact.size}"
            )
        if size != self.artifact.size or sha256 != self.artifact.sha256:
            raise ArtifactHashError(
                f"artifact sha256 {sha256[:12]}... ({size} bytes) does not match the release's "
                f"{self.artifact.sha256[:12]}... ({self.artifact.size} bytes)"
            )


def _verify_role(envelope: Envelope, root: Root, role: str) -> None:
    keys = root.roles[role]
    envelope.verify(role, keys.keyids, keys.threshold, root.role_keys(role))


def _typed(envelope: Envelope, cls: type[_Doc]) -> _Doc:
    doc_type: Any = envelope.signed.get("_type")
    if doc_type != cls.TYPE:
        raise WrongTypeError(f"document _type is {doc_type!r}, expected {cls.TYPE!r}")
    try:
        return cls.from_dict(envelope.signed)
    except MetadataFormatError as e:
        raise MalformedDocumentError(str(e)) from e
