"""Private key files of the registry: owner-only, passphrase-protected, never overwritten."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from edge_protocol import SigningKey
from edge_protocol.errors import KeyFormatError
from model_registry.trust.key_files import load_private_key, save_private_key


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
