"""Ed25519 keys: generation, key ids, PEM files.

The public form of a key is the object that goes into root metadata,
`{"keytype": "ed25519", "public": "<64 hex chars>"}`; its key id is the hex SHA-256 of that
object's canonical JSON. Reading and writing key files is the registry's business
(model_registry/trust/key_files.py): edge_protocol does no I/O.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge_protocol.canonical import canonical_bytes
from edge_protocol.errors import KeyFormatError

KEYTYPE_ED25519 = "ed25519"
_PUBLIC_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class PublicKey:
    """A verification key as it appears in root metadata."""

    public: str
    keytype: str = KEYTYPE_ED25519

    def __post_init__(self) -> None:
        if self.keytype != KEYTYPE_ED25519:
            raise KeyFormatError(f"unsupported keytype {self.keytype!r}; expected 'ed25519'")
        if not isinstance(self.public, str) or not _PUBLIC_HEX.fullmatch(self.public):
            raise KeyFormatError("ed25519 public key must be 64 lowercase hex characters")

    @classmethod
    def from_dict(cls, data: Any) -> PublicKey:
        """Build a key from its root-metadata object, refusing extra or missing fields."""
        if not isinstance(data, dict) or set(data) != {"keytype", "public"}:
            raise KeyFormatError("key object must have exactly 'keytype' and 'public'")
        return cls(public=data["public"], keytype=data["keytype"])

    def to_dict(self) -> dict[str, str]:
        """Return the root-metadata object of this key."""
        return {"keytype": self.keytype, "public": self.public}

    @property
    def keyid(self) -> str:
        """Hex SHA-256 of the canonical JSON of the key object."""
        return hashlib.sha256(canonical_bytes(self.to_dict())).hexdigest()

    def verify(self, signature: bytes, message: bytes) -> bool:
        """Return whether `signature` is this key's Ed25519 signature of `message`."""
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(self.public))
        try:
            key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class SigningKey:
    """An Ed25519 private key that signs canonical bytes."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private_key = private_key
        raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public_key = PublicKey(public=raw.hex())

    @classmethod
    def generate(cls) -> SigningKey:
        """Create a new random key."""
        return cls(Ed25519PrivateKey.generate())

    @property
    def keyid(self) -> str:
        """The key id of the public half."""
        return self.public_key.keyid

    def sign(self, message: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of `message`."""
        return self._private_key.sign(message)

    def to_pem(self, passphrase: bytes | None = None) -> bytes:
        """Serialize as PKCS#8 PEM, encrypted when a passphrase is given."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        return self._private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )

    @classmethod
    def from_pem(cls, data: bytes, passphrase: bytes | None = None) -> SigningKey:
        """Load a PKCS#8 PEM Ed25519 key, naming what is wrong when it cannot."""
        try:
            key = serialization.load_pem_private_key(data, password=passphrase or None)
        except TypeError as e:  # passphrase given for a clear key, or missing for an encrypted one
            raise KeyFormatError(f"cannot load private key: {e}") from e
        except ValueError as e:  # bad PEM, bad passphrase
            raise KeyFormatError(f"cannot load private key: {e}") from e
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFormatError(f"private key is {type(key).__name__}, expected Ed25519")
        return cls(key)
