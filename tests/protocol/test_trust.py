"""Trust rules: every rejection rule and every threat of the design, forged and refused."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import pytest

from edge_protocol import (
    REJECTION_REASONS,
    ArtifactVerifier,
    RejectedError,
    SigningKey,
    TrustedState,
)
from edge_protocol.errors import (
    ArtifactHashError,
    ChunkHashError,
    ChunkIndexError,
    ChunkSizeError,
    ExpiredError,
    MalformedDocumentError,
    OversizedDocumentError,
    ReleaseMismatchError,
    ReplayedAssignmentError,
    RootVersionError,
    SignatureThresholdError,
    SizeExceededError,
    WrongDeviceError,
    WrongTypeError,
)
from tests.protocol.factory import DEVICE, MODEL, NOW, FrozenClock, Registry, sign


def _state(registry: Registry, clock: FrozenClock | None = None, seq: int = 0) -> TrustedState:
    return TrustedState(
        registry.root_bytes(), device_id=DEVICE, assignment_seq=seq, clock=clock or FrozenClock()
    )


# Each case forges one attack and names the error the device must raise.
AssignmentForgery = Callable[[Registry], bytes]

ASSIGNMENT_ATTACKS: list[tuple[str, AssignmentForgery, type[RejectedError]]] = [
    (
        "arbitrary installation: unknown key",
        lambda r: r.assignment_bytes(r.assignment(), SigningKey.generate()),
        SignatureThresholdError,
    ),
    (
        "wrong role: signed by the root key",
        lambda r: r.assignment_bytes(r.assignment(), r.root_keys[0]),
        SignatureThresholdError,
    ),
    ("unsigned", lambda r: sign(r.assignment().to_dict()), SignatureThresholdError),
    (
        "wrong type: a signed release offered as assignment",
        lambda r: r.release_bytes(r.release()),
        WrongTypeError,
    ),
    (
        "indefinite freeze: expired",
        lambda r: r.assignment_bytes(r.assignment(expires=NOW - timedelta(seconds=1))),
        ExpiredError,
    ),
    (
        "wrong device",
        lambda r: r.assignment_bytes(r.assignment(device_id="dev-002")),
        WrongDeviceError,
    ),
    (
        "rollback: replayed seq",
        lambda r: r.assignment_bytes(r.assignment(seq=5)),
        ReplayedAssignmentError,
    ),
    (
        "rollback: older seq",
        lambda r: r.assignment_bytes(r.assignment(seq=4)),
        ReplayedAssignmentError,
    ),
    ("oversized", lambda r: b" " * (2 * 1024 * 1024), OversizedDocumentError),
    ("not json", lambda r: b"\x00\x01garbage", MalformedDocumentError),
    (
        "schema violation under a valid signature",
        lambda r: sign({**r.assignment().to_dict(), "seq": -1}, *r.release_keys),
        MalformedDocumentError,
    ),
]


@pytest.mark.parametrize(
    ("forge", "error"),
    [c[1:] for c in ASSIGNMENT_ATTACKS],
    ids=[c[0] for c in ASSIGNMENT_ATTACKS],
)
def test_forged_assignments_are_rejected(forge: AssignmentForgery, error: type) -> None:
    registry = Registry()
    state = _state(registry, seq=5)
    with pytest.raises(error) as caught:
        state.verify_assignment(forge(registry))
    assert caught.value.reason in REJECTION_REASONS
    assert state.assignment_seq == 5, "a rejected assignment must not move the high-water mark"


def test_valid_assignment_advances_seq_and_redelivery_is_idempotent() -> None:
    registry = Registry()
    state = _state(registry, seq=5)
    data = registry.assignment_bytes(registry.assignment(seq=6))
    assert state.verify_assignment(data).seq == 6
    # A retained assignment comes again after every reconnect: the same document is no replay.
    assert state.verify_assignment(data).seq == 6
    other_with_same_seq = registry.assignment_bytes(registry.assignment(seq=6, models={}))
    with pytest.raises(ReplayedAssignmentError):
        state.verify_assignment(other_with_same_seq)


def test_threshold_below_compromise_protects_devices() -> None:
    registry = Registry(release_keys=[SigningKey.generate() for _ in range(3)], release_threshold=2)
    state = _state(registry)
    stolen = registry.release_keys[0]
    with pytest.raises(SignatureThresholdError):
        state.verify_assignment(registry.assignment_bytes(registry.assignment(), stolen))
    two = registry.release_keys[:2]
    assert state.verify_assignment(registry.assignment_bytes(registry.assignment(), *two))


RELEASE_ATTACKS: list[tuple[str, Callable[[Registry], bytes], type[RejectedError]]] = [
    (
        "mix-and-match: other version",
        lambda r: r.release_bytes(r.release(version=2)),
        ReleaseMismatchError,
    ),
    (
        "mix-and-match: other artifact",
        lambda r: r.release_bytes(r.release(artifact=r.artifact(size=999)[1])),
        ReleaseMismatchError,
    ),
    (
        "release of another model",
        lambda r: r.release_bytes(r.release(model="other")),
        ReleaseMismatchError,
    ),
    (
        "expired release",
        lambda r: r.release_bytes(r.release(expires=NOW)),
        ExpiredError,
    ),
    (
        "release signed by an unknown key",
        lambda r: r.release_bytes(r.release(), SigningKey.generate()),
        SignatureThresholdError,
    ),
    (
        "assignment offered as release",
        lambda r: r.assignment_bytes(r.assignment()),
        WrongTypeError,
    ),
]


@pytest.mark.parametrize(
    ("forge", "error"), [c[1:] for c in RELEASE_ATTACKS], ids=[c[0] for c in RELEASE_ATTACKS]
)
def test_forged_releases_are_rejected(forge: Callable[[Registry], bytes], error: type) -> None:
    registry = Registry()
    state = _state(registry)
    assignment = state.verify_assignment(registry.assignment_bytes(registry.assignment()))
    with pytest.raises(error):
        state.verify_release(forge(registry), MODEL, assignment.models[MODEL])


def test_matching_release_is_accepted() -> None:
    registry = Registry()
    state = _state(registry)
    assignment = state.verify_assignment(registry.assignment_bytes(registry.assignment()))
    release = state.verify_release(
        registry.release_bytes(registry.release()), MODEL, assignment.models[MODEL]
    )
    assert release.version == 1


def test_size_mismatch_between_release_and_assignment_is_rejected() -> None:
    registry = Registry()
    state = _state(registry)
    release = registry.release()
    pinned = registry.assignment(release=release).models[MODEL]
    with pytest.raises(ReleaseMismatchError, match="size"):
        state.verify_release(
            registry.release_bytes(release), MODEL, replace(pinned, size=pinned.size + 1)
        )


def test_expired_root_stops_updates_and_reports_stale() -> None:
    registry = Registry()
    clock = FrozenClock()
    state = TrustedState(
        registry.root_bytes(expires=NOW + timedelta(hours=1)), device_id=DEVICE, clock=clock
    )
    assert not state.is_stale()
    clock.advance(timedelta(hours=2))
    assert state.is_stale()
    fresh = registry.assignment(expires=NOW + timedelta(days=30))
    with pytest.raises(ExpiredError, match="root"):
        state.verify_assignment(registry.assignment_bytes(fresh))


# --- root rotation ---------------------------------------------------------------------------


def _rotate(registry: Registry) -> tuple[Registry, list[SigningKey]]:
    """Registry at root version + 1 with new root and release keys; returns the old root keys."""
    old_keys = registry.root_keys
    registry.root_keys = [SigningKey.generate()]
    registry.release_keys = [SigningKey.generate()]
    registry.root_version += 1
    return registry, old_keys


def test_root_rotation_walks_the_chain_and_revokes_old_release_keys() -> None:
    registry = Registry()
    state = _state(registry)
    old_release_key = registry.release_keys[0]
    registry, old_root_keys = _rotate(registry)
    state.update_root(registry.root_bytes(*old_root_keys, *registry.root_keys))
    assert state.root.version == 2
    with pytest.raises(SignatureThresholdError):
        state.verify_assignment(registry.assignment_bytes(registry.assignment(), old_release_key))
    assert state.verify_assignment(registry.assignment_bytes(registry.assignment()))


@pytest.mark.parametrize(
    ("signed_by", "version_step", "error"),
    [
        ("new keys only", 1, SignatureThresholdError),
        ("old keys only", 1, SignatureThresholdError),
        ("both", 2, RootVersionError),
        ("both", 0, RootVersionError),
    ],
)
def test_bad_root_updates_are_rejected(signed_by: str, version_step: int, error: type) -> None:
    registry = Registry()
    state = _state(registry)
    registry, old_root_keys = _rotate(registry)
    registry.root_version = 1 + version_step
    signers = {
        "new keys only": registry.root_keys,
        "old keys only": old_root_keys,
        "both": [*old_root_keys, *registry.root_keys],
    }[signed_by]
    with pytest.raises(error):
        state.update_root(registry.root_bytes(*signers))
    assert state.root.version == 1, "the trusted root never moves on a rejected update"


def test_provisioned_root_must_be_self_signed() -> None:
    registry = Registry()
    with pytest.raises(SignatureThresholdError):
        TrustedState(registry.root_bytes(SigningKey.generate()), device_id=DEVICE)


# --- artifact ----------------------------------------------------------------------------


ChunkAttack = Callable[[bytes], tuple[int, bytes]]

CHUNK_ATTACKS: list[tuple[str, ChunkAttack, type[RejectedError]]] = [
    ("tampered chunk", lambda d: (0, b"X" + d[1:256]), ChunkHashError),
    ("chunk from another index", lambda d: (1, d[:256]), ChunkHashError),
    ("endless data: longer chunk", lambda d: (3, d[768:] + b"\x00"), SizeExceededError),
    ("endless data: oversized chunk", lambda d: (0, d[:256] * 100), SizeExceededError),
    ("truncated chunk", lambda d: (3, d[768:-1]), ChunkSizeError),
    ("index past the end", lambda d: (4, d[:10]), ChunkIndexError),
    ("negative index", lambda d: (-1, d[:256]), ChunkIndexError),
]


@pytest.mark.parametrize(
    ("attack", "error"), [c[1:] for c in CHUNK_ATTACKS], ids=[c[0] for c in CHUNK_ATTACKS]
)
def test_forged_chunks_are_rejected(attack: ChunkAttack, error: type) -> None:
    data, artifact = Registry().artifact(size=1000, chunk_size=256)
    index, chunk = attack(data)
    with pytest.raises(error):
        ArtifactVerifier(artifact).verify_chunk(index, chunk)


def test_genuine_chunks_and_artifact_pass() -> None:
    data, artifact = Registry().artifact(size=1000, chunk_size=256)
    verifier = ArtifactVerifier(artifact)
    for index in range(4):
        verifier.verify_chunk(index, data[index * 256 : (index + 1) * 256])
    verifier.verify_complete(hashlib.sha256(data).hexdigest(), len(data))


def test_whole_artifact_hash_and_size_are_checked() -> None:
    data, artifact = Registry().artifact()
    verifier = ArtifactVerifier(artifact)
    with pytest.raises(ArtifactHashError):
        verifier.verify_complete(hashlib.sha256(data[:-1]).hexdigest(), len(data))
    with pytest.raises(SizeExceededError):
        verifier.verify_complete(hashlib.sha256(data).hexdigest(), len(data) + 1)


def test_every_rejection_error_has_a_distinct_reason_code() -> None:
    assert len(set(REJECTION_REASONS)) == len(REJECTION_REASONS)
