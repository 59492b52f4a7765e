"""Ed25519 keys: ids, signatures and PEM files."""

from __future__ import annotations

import hashlib
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_protocol import PublicKey, SigningKey, canonical_bytes, load_private_key, save_private_key
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


def test_private_key_file_is_owner_only_and_loads_back(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "release.pem"
    save_private_key(key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_private_key(path).keyid == key.keyid
    assert list(tmp_path.iterdir()) == [path], "no temporary file is left behind"


def test_passphrase_protects_the_key_file(tmp_path: Path) -> None:
    key = SigningKey.generate()
    path = tmp_path / "root.pem"
    save_private_key(key, path, passphrase=b"correct horse")
    assert b"ENCRYPTED" in path.read_bytes()
    assert load_private_key(path, b"correct horse").keyid == key.keyid
    with pytest.raises(KeyFormatError, match=r"root\.pem"):
        load_private_key(path, b"wrong")
    with pytest.raises(KeyFormatError):
        load_private_key(path)


def test_existing_key_file_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "root.pem"
    save_private_key(SigningKey.generate(), path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        save_private_key(SigningKey.generate(), path)
    assert path.read_bytes() == before


def test_non_ed25519_and_garbage_key_files_are_refused(tmp_path: Path) -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(KeyFormatError, match="expected Ed25519"):
        SigningKey.from_pem(ec_pem)
    with pytest.raises(KeyFormatError):
        SigningKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
    with pytest.raises(KeyFormatError, match="cannot read"):
        load_private_key(tmp_path / "missing.pem")


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
