"""Ed25519 keys: ids, signatures, PEM encoding."""

from __future__ import annotations

import hashlib

import pytest

from edge_protocol import PublicKey, SigningKey, canonical_bytes
from edge_protocol.errors import KeyFormatError


def test_keyid_is_the_sha256_of_the_canonical_public_key_object() -> None:
    key = SigningKey.generate()
    expected = hashlib.sha256(
        canonical_bytes({"keytype": "ed25519", "public": key.public_key.public})
    ).hexdigest()
    assert key.keyid == expected
    assert PublicKey.from_dict(key.public_key.to_dict()).keyid == expected


def test_signature_verifies_only_for_the_same_key_and_message() -> None:
    key, other = SigningKey.generate(), SigningKey.generate()
    sig = key.sign(b"message")
    assert key.public_key.verify(sig, b"message")
    assert not key.public_key.verify(sig, b"messagE")
    assert not other.public_key.verify(sig, b"message")
    assert not key.public_key.verify(sig[:-1], b"message")


@pytest.mark.parametrize(
    "obj",
    [
        {"keytype": "rsa", "public": "00" * 32},
        {"keytype": "ed25519", "public": "AB" * 32},
        {"keytype": "ed25519", "public": "00" * 31},
        {"keytype": "ed25519", "public": "00" * 32, "scheme": "x"},
        {"public": "00" * 32},
        "ed25519",
    ],
)
def test_malformed_public_key_objects_are_refused(obj: object) -> None:
    with pytest.raises(KeyFormatError):
        PublicKey.from_dict(obj)
