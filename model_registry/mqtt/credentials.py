"""MQTT passwords in mosquitto 2.x's password-file format, for mosquitto and the embedded broker.

A stored hash is `$7$<iterations>$<base64 salt>$<base64 PBKDF2-HMAC-SHA512>`, exactly what
`mosquitto_passwd` writes (12-byte salt, 64-byte digest, standard base64 with padding). The
registry stores only these hashes, so the same value goes into mosquitto's `passwd` file and
into the embedded broker's password lookup.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets

from model_registry.errors import InvalidInputError

PBKDF2_SHA512_TAG = "7"  # mosquitto 2.x default (`mosquitto_passwd -H sha512-pbkdf2`)
SHA512_TAG = "6"  # mosquitto 1.x format (`-H sha512`): one salted SHA-512, accepted for old files
SALT_BYTES = 12  # what mosquitto_passwd generates
DEFAULT_ITERATIONS = 101  # mosquitto_passwd's fixed count; mosquitto reads the count from the hash
MAX_ITERATIONS = 10_000_000  # a stored hash cannot make a login cost minutes
_DIGEST_BYTES = 64
_PASSWORD_BYTES = 24  # 32 URL-safe characters, 192 bits


def generate_password() -> str:
    """Return a new random password of 32 URL-safe characters."""
    return secrets.token_urlsafe(_PASSWORD_BYTES)


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = DEFAULT_ITERATIONS
) -> str:
    """Hash `password` as mosquitto_passwd does: `$7$<iterations>$<salt>$<hash>`."""
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    if len(salt) != SALT_BYTES:
        raise InvalidInputError(f"password salt must be {SALT_BYTES} bytes, got {len(salt)}")
    if not 1 <= iterations <= MAX_ITERATIONS:
        raise InvalidInputError(f"PBKDF2 iterations must be 1..{MAX_ITERATIONS}, got {iterations}")
    digest = _pbkdf2(password, salt, iterations)
    return f"${PBKDF2_SHA512_TAG}${iterations}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, hashed: str) -> bool:
    """Whether `password` matches a `$7$` (or legacy `$6$`) mosquitto hash; False if malformed."""
    parts = hashed.split("$")
    try:
        match parts:
            case ["", "7", count, salt_b64, digest_b64] if count.isdigit():
                iterations = int(count)
                if not 1 <= iterations <= MAX_ITERATIONS:
                    return False
                expected = _unb64(digest_b64)
                actual = _pbkdf2(password, _unb64(salt_b64), iterations)
            case ["", "6", salt_b64, digest_b64]:
                expected = _unb64(digest_b64)
                actual = hashlib.sha512(password.encode("utf-8") + _unb64(salt_b64)).digest()
            case _:
                return False
    except (binascii.Error, ValueError):
        return False
    # compare_digest takes time independent of where the bytes differ.
    return hmac.compare_digest(actual, expected)


def pbkdf2_fields(hashed: str) -> tuple[int, bytes, bytes]:
    """(iterations, salt, digest) of a `$7$` hash; InvalidInputError for anything else."""
    match hashed.split("$"):
        case ["", "7", count, salt_b64, digest_b64] if count.isdigit():
            try:
                salt, digest = _unb64(salt_b64), _unb64(digest_b64)
            except (binascii.Error, ValueError) as e:
                raise InvalidInputError("the password hash has bad base64") from e
            iterations = int(count)
            if len(salt) != SALT_BYTES or len(digest) != _DIGEST_BYTES:
                raise InvalidInputError("the password hash has a wrong salt or digest length")
            if not 1 <= iterations <= MAX_ITERATIONS:
                raise InvalidInputError(f"the password hash has {iterations} iterations")
            return iterations, salt, digest
        case _:
            raise InvalidInputError("the password hash is not a $7$ (PBKDF2-SHA512) hash")


def _pbkdf2(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, iterations, _DIGEST_BYTES)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    # validate=True refuses characters outside the alphabet instead of silently skipping them.
    return base64.b64decode(text.encode("ascii"), validate=True)
