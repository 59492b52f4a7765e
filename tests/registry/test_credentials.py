"""MQTT password hashes: mosquitto_passwd's format, checked against the real tool and broker."""

from __future__ import annotations

import base64
import re
import subprocess
from pathlib import Path

import pytest

from model_registry.errors import InvalidInputError
from model_registry.mqtt.credentials import generate_password, hash_password, verify_password
from tests.support.broker import (
    BrokerFactory,
    ConnectRefusedError,
    auth_settings,
    common_settings,
    find_mosquitto_passwd,
    free_port,
    write_config,
)

PBKDF2_LINE = re.compile(r"^\$7\$(\d+)\$([A-Za-z0-9+/]{16})\$([A-Za-z0-9+/]{86}==)$")


def mosquitto_passwd(tmp_path: Path, password: str, *, legacy: bool = False) -> str:
    """The hash the real mosquitto_passwd writes for `password`."""
    path = tmp_path / f"passwd-{len(list(tmp_path.iterdir()))}"
    algorithm = ["-H", "sha512"] if legacy else []
    argv = [str(find_mosquitto_passwd()), *algorithm, "-c", "-b", str(path), "user", password]
    subprocess.run(argv, check=True, capture_output=True, timeout=30)
    username, hashed = path.read_text(encoding="utf-8").strip().split(":", 1)
    assert username == "user"
    return hashed


def test_generated_passwords_are_32_url_safe_characters_and_unique() -> None:
    passwords = {generate_password() for _ in range(100)}
    assert len(passwords) == 100
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{32}", password) for password in passwords)


def test_hash_has_mosquitto_passwd_layout() -> None:
    match = PBKDF2_LINE.match(hash_password("secret"))
    assert match is not None
    assert match.group(1) == "101"
    assert len(base64.b64decode(match.group(2))) == 12
    assert len(base64.b64decode(match.group(3))) == 64


def test_hashes_are_salted() -> None:
    assert hash_password("secret") != hash_password("secret")


@pytest.mark.parametrize("password", ["secret", "p:ss wörd$7$", "x" * 200])
def test_same_salt_gives_the_hash_mosquitto_passwd_wrote(tmp_path: Path, password: str) -> None:
    theirs = mosquitto_passwd(tmp_path, password)
    iterations, salt_b64 = PBKDF2_LINE.match(theirs).group(1, 2)  # type: ignore[union-attr]
    salt = base64.b64decode(salt_b64)
    assert hash_password(password, salt=salt, iterations=int(iterations)) == theirs


def test_verify_accepts_our_hashes_and_mosquitto_passwds(tmp_path: Path) -> None:
    for hashed in (
        hash_password("secret"),
        hash_password("secret", iterations=1000),
        mosquitto_passwd(tmp_path, "secret"),
        mosquitto_passwd(tmp_path, "secret", legacy=True),  # `$6$`, mosquitto 1.x's format
    ):
        assert verify_password("secret", hashed), hashed
        assert not verify_password("Secret", hashed), hashed
        assert not verify_password("", hashed), hashed


@pytest.mark.parametrize(
    "hashed",
    [
        "",
        "secret",
        "$7$",
        "$7$101$$",
        "$7$abc$AAAAAAAAAAAAAAAA$AAAA",
        "$7$0$AAAAAAAAAAAAAAAA$AAAA",
        "$7$99999999999$AAAAAAAAAAAAAAAA$AAAA",
        "$7$101$not base64!$AAAA",
        "$7$101$AAAAAAAAAAAAAAAA$AAAA$extra",
        "$5$AAAAAAAAAAAAAAAA$AAAA",
        "$7$101$AAAAAAAAAAAAAAAA$ÄÄÄÄ",
    ],
)
def test_verify_refuses_malformed_hashes_without_raising(hashed: str) -> None:
    assert verify_password("secret", hashed) is False


@pytest.mark.parametrize(
    ("salt", "iterations"), [(b"short", 101), (b"x" * 13, 101), (b"x" * 12, 0)]
)
def test_hash_refuses_bad_parameters(salt: bytes, iterations: int) -> None:
    with pytest.raises(InvalidInputError):
        hash_password("secret", salt=salt, iterations=iterations)


def test_real_mosquitto_accepts_passwords_hashed_here(broker_factory: BrokerFactory) -> None:
    users = {"registry": generate_password(), "dev-a": "pässword with spaces"}
    workdir = broker_factory.new_workdir("credentials")
    password_file = workdir / "passwd"
    password_file.write_text(
        f"registry:{hash_password(users['registry'])}\n"
        f"dev-a:{hash_password(users['dev-a'], iterations=5000)}\n",
        encoding="utf-8",
    )
    acl_file = workdir / "acl"
    acl_file.write_text("user registry\ntopic readwrite #\n", encoding="utf-8")
    port = free_port()
    config = write_config(
        workdir,
        common_settings() + f"listener {port} 127.0.0.1\n" + auth_settings(password_file, acl_file),
    )
    broker = broker_factory.from_config(config, port=port, users=users)

    with broker.connect("registry"), broker.connect("dev-a"):
        pass
    with pytest.raises(ConnectRefusedError):
        broker.connect("dev-a", "pässword")
