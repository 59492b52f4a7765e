"""Private key files: PEM, written atomically, readable by their owner alone, never overwritten."""

from __future__ import annotations

from pathlib import Path

from edge_common.files import write_atomic
from edge_protocol import SigningKey
from edge_protocol.errors import KeyFormatError


def save_private_key(key: SigningKey, path: Path, passphrase: bytes | None = None) -> None:
    """Write `key` as PEM to `path` atomically, with mode 0600, refusing to overwrite."""
    if path.exists():
        raise FileExistsError(f"{path} already exists; refusing to overwrite a key")
    write_atomic(path, key.to_pem(passphrase), mode=0o600, exclusive=True)


def load_private_key(path: Path, passphrase: bytes | None = None) -> SigningKey:
    """Read a PEM private key file written by `save_private_key`."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise KeyFormatError(f"cannot read private key {path}: {e.strerror}") from e
    try:
        return SigningKey.from_pem(data, passphrase)
    except KeyFormatError as e:
        raise KeyFormatError(f"{path}: {e}") from e
