"""Creating and signing roots, releases and assignments.

The root keys sign roots only, and only here at `init` or rotation time; the online release key
signs releases and assignments. Every document is produced through the `edge_protocol` types,
so what is signed is exactly what devices will parse.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta

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
)
from edge_protocol.profile import Profile

ROOT_LIFETIME = timedelta(days=365)


def make_root(
    version: int,
    root_keys: Sequence[SigningKey],
    release_keys: Sequence[SigningKey],
    *,
    root_threshold: int,
    release_threshold: int = 1,
    expires: datetime,
) -> Root:
    """Return a root naming `root_keys` and `release_keys` with their thresholds."""
    keys = {k.keyid: k.public_key for k in (*root_keys, *release_keys)}
    roles = {
        "root": RoleKeys(tuple(k.keyid for k in root_keys), root_threshold),
        "release": RoleKeys(tuple(k.keyid for k in release_keys), release_threshold),
    }
    return Root(version=version, expires=expires, keys=keys, roles=roles)


def sign_document(signed: Mapping[str, object], keys: Sequence[SigningKey]) -> bytes:
    """Return the envelope bytes of `signed` signed by every key in `keys`."""
    envelope = Envelope(signed=dict(signed))
    for key in keys:
        envelope = envelope.sign(key)
    return envelope.to_bytes()


class ReleaseSigner:
    """Signs releases and assignments with the online release key."""

    def __init__(
        self,
        release_key: SigningKey,
        *,
        release_lifetime: timedelta,
        assignment_lifetime: timedelta,
    ) -> None:
        self._key = release_key
        self._release_lifetime = release_lifetime
        self._assignment_lifetime = assignment_lifetime

    @property
    def keyid(self) -> str:
        """The key id of the release key this signer signs with."""
        return self._key.keyid

    def release(
        self,
        *,
        model: str,
        version: int,
        label: str,
        artifact: Artifact,
        io: ModelIO,
        selftest: SelfTest,
        build: dict[str, object],
        now: datetime,
        profile: Profile | None = None,
    ) -> tuple[Release, bytes]:
        """Create and sign a release at time `now`; return it with its envelope bytes."""
        now = _whole_seconds(now)
        release = Release(
            model=model,
            version=version,
            label=label,
            created=now,
            expires=now + self._release_lifetime,
            artifact=artifact,
            io=io,
            selftest=selftest,
            build=dict(build),
            profile=profile,
        )
        return release, sign_document(release.to_dict(), [self._key])

    def renew_release(self, envelope: bytes, now: datetime) -> tuple[Release, bytes]:
        """Re-sign a stored release with a fresh expiry, keeping every other field."""
        release = Release.from_dict(Envelope.from_bytes(envelope).signed)
        renewed = replace(release, expires=_whole_seconds(now) + self._release_lifetime)
        return renewed, sign_document(renewed.to_dict(), [self._key])

    def assignment(
        self, device_id: str, seq: int, models: Mapping[str, AssignedModel], now: datetime
    ) -> tuple[Assignment, bytes]:
        """Create and sign assignment `seq` for one device at time `now`."""
        now = _whole_seconds(now)
        assignment = Assignment(
            device_id=device_id,
            seq=seq,
            created=now,
            expires=now + self._assignment_lifetime,
            models=dict(models),
        )
        return assignment, sign_document(assignment.to_dict(), [self._key])

    def assignments(
        self, batch: Iterable[tuple[str, int, Mapping[str, AssignedModel]]], now: datetime
    ) -> list[bytes]:
        """Sign one assignment per (device id, seq, models), all at time `now`; the envelopes.

        A deployment signs thousands at once: this runs in a worker thread, off the event loop.
        """
        return [self.assignment(device, seq, models, now)[1] for device, seq, models in batch]


def _whole_seconds(moment: datetime) -> datetime:
    # The wire carries whole seconds; rounding here keeps objects equal to their parsed form.
    return moment.replace(microsecond=0)
