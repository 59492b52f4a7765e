"""Genuine files of a device bundle: a signed trust root and TLS material, made on the spot.

The configuration checks open these files, so stand-ins must be the real thing: a root signed
by its own root keys, PEM certificates from a throw-away CA, and a client key that fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from edge_protocol import Envelope, RoleKeys, Root, SigningKey, utc_now

from .certs import issue_client_cert, make_ca, write_cert, write_key


@dataclass(frozen=True)
class TrustRoot:
    """A root document and the keys behind it."""

    root_keys: tuple[SigningKey, ...]
    release_keys: tuple[SigningKey, ...]
    root: Root

    def signed(self, *signers: SigningKey) -> bytes:
        """The root's envelope signed by `signers` (default: every root key)."""
        envelope = Envelope(signed=self.root.to_dict())
        for key in signers or self.root_keys:
            envelope = envelope.sign(key)
        return envelope.to_bytes()


def make_root(
    *, version: int = 1, root_threshold: int = 1, expires_in: timedelta = timedelta(days=365)
) -> TrustRoot:
    """A root with `root_threshold` of two root keys required and one release key."""
    root_keys = (SigningKey.generate(), SigningKey.generate())
    release_keys = (SigningKey.generate(),)
    keys = {k.keyid: k.public_key for k in (*root_keys, *release_keys)}
    roles = {
        "root": RoleKeys(tuple(k.keyid for k in root_keys), root_threshold),
        "release": RoleKeys(tuple(k.keyid for k in release_keys), 1),
    }
    expires = utc_now().replace(microsecond=0) + expires_in
    root = Root(version=version, expires=expires, keys=keys, roles=roles)
    return TrustRoot(root_keys, release_keys, root)


def write_root(path: Path, trust: TrustRoot | None = None) -> TrustRoot:
    """Write a genuine root (signed by all its root keys) to `path`."""
    trust = trust or make_root()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(trust.signed())
    return trust


@dataclass(frozen=True)
class TlsFiles:
    """A CA certificate and a client certificate and key it issued."""

    ca_file: Path
    client_cert: Path
    client_key: Path


def write_tls(directory: Path, stem: str = "client") -> TlsFiles:
    """Write `ca.crt`, `<stem>.crt` and `<stem>.key` into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = make_ca()
    client = issue_client_cert(ca, stem)
    ca_file = write_cert(ca.cert, directory / "ca.crt")
    client_cert = write_cert(client.cert, directory / f"{stem}.crt")
    client_key = write_key(client.key, directory / f"{stem}.key")
    return TlsFiles(ca_file, client_cert, client_key)
