"""The files registry.toml names, broken one at a time, through `check-config` and `serve`.

Each case starts from a home made by `init`, breaks one thing (a key file, a secret, the
database, the blobs directory, an address), then runs `model-registry check-config` and
`model-registry serve` as processes: both must exit 1 with one sentence naming registry.toml
and the key, and no traceback. Then: one `serve` per SQLite home.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from model_registry.home import InitResult
from tests.support.broker import LOCALHOST, free_port
from tests.support.certs import make_ca
from tests.support.registry import RegistryProcess

BIN = Path(sys.executable).parent
Setup = Callable[[Path], dict[str, Any]]
DIR = object()  # make a directory there
GONE = object()  # delete it


def registry_toml(api_port: int, broker_port: int, changes: dict[str, Any]) -> str:
    """registry.toml with free addresses and `changes` (dotted keys) on top."""
    sections: dict[str, dict[str, Any]] = {
        "api": {"listen": f"{LOCALHOST}:{api_port}"},
        "mqtt": {"embedded_listen": f"{LOCALHOST}:{broker_port}"},
    }
    for dotted, value in changes.items():
        section, _, key = dotted.partition(".")
        sections.setdefault(section, {})[key] = value
    lines = []
    for name, table in sections.items():
        lines += [f"[{name}]", *(f'{key} = "{value}"' for key, value in table.items())]
    return "\n".join(lines) + "\n"


def replace(name: str, content: bytes | str | object | Callable[[], bytes]) -> Setup:
    """Replace the home's file `name` (content, DIR or GONE); the config is unchanged."""

    def make(home: Path) -> dict[str, Any]:
        path = home / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is DIR:
            path.mkdir()
        elif content is not GONE:
            data = content() if callable(content) else content
            path.write_bytes(data.encode() if isinstance(data, str) else bytes(data))  # type: ignore[arg-type]
        return {}

    return make


def point(key: str, name: str, content: bytes | str | object = GONE) -> Setup:
    """Set `key` to `name` in the home, creating it with `content` unless GONE."""

    def make(home: Path) -> dict[str, Any]:
        replace(name, content)(home)
        return {key: name}

    return make


def value(key: str, setting: str) -> Setup:
    return lambda _home: {key: setting}


def rsa_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    none = serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, none)


def encrypted_ed25519() -> bytes:
    key = ed25519.Ed25519PrivateKey.generate()
    encryption = serialization.BestAvailableEncryption(b"passphrase")
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def certificate() -> bytes:
    return make_ca().cert.public_bytes(serialization.Encoding.PEM)


HELD: list[socket.socket] = []


def taken(key: str) -> Setup:
    """`key` (an address) on a port another process listens on."""

    def make(_home: Path) -> dict[str, Any]:
        holder = socket.socket()
        holder.bind((LOCALHOST, 0))
        holder.listen()
        HELD.append(holder)
        return {key: f"{LOCALHOST}:{holder.getsockname()[1]}"}

    return make


@pytest.fixture(autouse=True)
def _close_held() -> Iterator[None]:
    yield
    while HELD:
        HELD.pop().close()


def case(name: str, setup: Setup, key: str, expected: str) -> Any:
    return pytest.param(setup, key, expected, id=name)


KEY, PW, CA, ROOT = "signing.release_key", "mqtt.password_file", "mqtt.ca_file", "signing.root_file"
DB, BLOBS = "storage.database", "storage.blobs"
RELEASE, SECRET = "keys/release.pem", "secrets/mqtt-password"
NOT_KEY = "is not a PEM private key"
CASES = [
    case("key-garbage", replace(RELEASE, "garbage"), KEY, NOT_KEY),
    case("key-empty", replace(RELEASE, ""), KEY, "is empty"),
    case("key-missing", replace(RELEASE, GONE), KEY, "there is no file at"),
    case("key-is-dir", replace(RELEASE, DIR), KEY, "is a directory"),
    case("key-huge", replace(RELEASE, "k" * 70_000), KEY, "is larger than"),
    case("key-rsa", replace(RELEASE, rsa_key), KEY, "holds a key of type RSA"),
    case("key-encrypted", replace(RELEASE, encrypted_ed25519), KEY, "is encrypted"),
    case("key-is-cert", replace(RELEASE, certificate), KEY, NOT_KEY),
    case("password-missing", replace(SECRET, GONE), PW, "there is no file at"),
    case("password-empty", replace(SECRET, ""), PW, "is empty"),
    case("password-blank", replace(SECRET, " \n"), PW, "holds only white space"),
    case("password-binary", replace(SECRET, b"\xff\xfe"), PW, "is not UTF-8"),
    case("password-is-dir", replace(SECRET, DIR), PW, "is a directory"),
    case("ca-not-pem", point(CA, "ca.pem", "CA"), CA, "is not a PEM certificate"),
    case("ca-is-a-key", point(CA, "ca.pem", rsa_key()), CA, "is not a PEM certificate"),
    case("ca-missing", point(CA, "ca.pem"), CA, "there is no file at"),
    case("root-corrupt", replace("root.json", "{}"), ROOT, "is not a valid signed root"),
    case("root-missing", replace("root.json", GONE), ROOT, "there is no file at"),
    case("db-is-dir", point(DB, "db", DIR), DB, "is a directory"),
    case("db-not-sqlite", point(DB, "other.db", "not a database"), DB, "not a SQLite database"),
    case("db-no-directory", value(DB, "nowhere/registry.db"), DB, "does not exist"),
    case("db-postgres-no-host", value(DB, "postgresql://db.invalid/r"), DB, "cannot connect"),
    case("db-postgres-down", value(DB, "postgresql://x:hunter2@127.0.0.1:9/r"), DB, "refused"),
    case("db-unknown-url", value(DB, "mysql://db/registry"), DB, "neither a SQLite path"),
    case("blobs-is-file", point(BLOBS, "blob-file", "x"), BLOBS, "is not a directory"),
    case("blobs-in-a-file", value(BLOBS, "registry.toml/blobs"), BLOBS, "cannot be created"),
    case("api-taken", taken("api.listen"), "api.listen", "is already in use"),
    case("broker-taken", taken("mqtt.embedded_listen"), "mqtt.embedded_listen", "already in use"),
]


def model_registry(*argv: str, demoted: bool = False) -> subprocess.CompletedProcess[str]:
    command = [str(BIN / "model-registry"), *argv]
    if demoted and os.geteuid() == 0:  # so that file modes apply to root too
        drop = "-dac_override,-dac_read_search,-fowner"
        command = ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", "--", *command]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_the_initialised_home_passes(registry_home: InitResult) -> None:
    home = registry_home.home
    (home / "registry.toml").write_text(registry_toml(free_port(), free_port(), {}))

    result = model_registry("check-config", "--home", str(home))

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(f"{home / 'registry.toml'}: OK\n")


@pytest.mark.parametrize("command", ["check-config", "serve"])
@pytest.mark.parametrize(("setup", "key", "expected"), CASES)
def test_a_broken_file_is_one_sentence_naming_the_file_and_the_key(
    registry_home: InitResult, command: str, setup: Setup, key: str, expected: str
) -> None:
    home = registry_home.home
    changes = setup(home)
    (home / "registry.toml").write_text(registry_toml(free_port(), free_port(), changes))

    result = model_registry(command, "--home", str(home))

    assert "Traceback" not in result.stderr, result.stderr
    assert "hunter2" not in result.stderr  # a database password is never shown
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"model-registry {command}: {home / 'registry.toml'}: {key}: ")
    assert expected in lines[0]


def chmod(name: str, mode: int) -> Setup:
    def make(home: Path) -> dict[str, Any]:
        (home / name).chmod(mode)
        return {}

    return make


PERMISSION_CASES = [
    case("release-key", chmod(RELEASE, 0), KEY, "Permission denied"),
    case("password", chmod(SECRET, 0), PW, "Permission denied"),
    case("database-directory", chmod(".", 0o500), DB, "is not writable"),
    case("blobs", chmod("blobs", 0o500), BLOBS, "is not writable"),
]


@pytest.mark.parametrize("command", ["check-config", "serve"])
@pytest.mark.parametrize(("setup", "key", "expected"), PERMISSION_CASES)
def test_a_permission_problem_is_named(
    registry_home: InitResult, command: str, setup: Setup, key: str, expected: str
) -> None:
    home = registry_home.home
    (home / "registry.toml").write_text(registry_toml(free_port(), free_port(), {}))
    setup(home)
    try:
        result = model_registry(command, "--home", str(home), demoted=True)
    finally:
        for path in (home, *home.rglob("*")):
            path.chmod(0o700)

    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"model-registry {command}: {home / 'registry.toml'}: {key}: ")
    assert expected in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_a_taken_listen_override_names_the_option(registry_home: InitResult) -> None:
    home = registry_home.home
    address = taken("api.listen")(home)["api.listen"]

    result = model_registry("serve", "--home", str(home), "--listen", address)

    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1
    assert result.stderr == (
        f"model-registry serve: --listen: {address} is already in use by another process; "
        "stop it or choose a free port\n"
    )


def test_one_serve_per_sqlite_home(registry_home: InitResult) -> None:
    home = registry_home.home
    first = RegistryProcess(home, ("--embedded-broker", f"{LOCALHOST}:{free_port()}"))
    first.start()
    try:
        assert first.process is not None
        second = model_registry(
            "serve", "--home", str(home), "--listen", f"{LOCALHOST}:{free_port()}",
            "--embedded-broker", f"{LOCALHOST}:{free_port()}",
        )  # fmt: skip
        check = model_registry("check-config", "--home", str(home))

        assert second.returncode == 1, second.stderr
        assert "Traceback" not in second.stderr
        assert second.stderr == (
            f"model-registry serve: registry home {home} is in use by another model-registry "
            f"serve (pid {first.process.pid}); with SQLite storage one serve runs per home\n"
        )
        assert check.returncode == 0, check.stderr
        assert f"a serve (pid {first.process.pid}) is running" in check.stderr
        with urllib.request.urlopen(f"{first.url}/healthz", timeout=10) as health:  # noqa: S310
            assert health.status == 200
        assert first.process.poll() is None
    finally:
        if first.process is not None:
            first.process.kill()  # SIGKILL: serve releases nothing itself
            first.process.wait()

    restarted = RegistryProcess(home, ("--embedded-broker", f"{LOCALHOST}:{free_port()}"))
    restarted.start()  # the kernel dropped the lock of the killed one
    restarted.stop()
    assert restarted.process is not None
    assert restarted.process.returncode == 0


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_a_malformed_mqtt_url_override_is_refused(registry_home: InitResult, command: str) -> None:
    home = str(registry_home.home)
    listen = f"{LOCALHOST}:{free_port()}"
    result = model_registry(command, "--home", home, "--listen", listen, "--mqtt-url", "http://x")
    assert result.returncode == 1
    assert result.stderr == (
        f"model-registry {command}: --mqtt-url 'http://x' must look like mqtt://host[:port] "
        "or mqtts://host[:port]\n"
    )
