"""The files device.toml names, attacked one at a time through the real `edge-agent` commands.

Every case breaks one file (or the directory, socket or address a key names) in a bundle that
is otherwise genuine, then runs `edge-agent check-config` and `edge-agent run` as processes:
both must exit 1 with one sentence naming the file and the key, and no traceback.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from edge_protocol import Envelope
from tests.agent.device_toml import PASSWORD, TOKEN, changed, write
from tests.support.broker import LOCALHOST, free_port
from tests.support.certs import issue_client_cert, make_ca, write_key
from tests.support.provisioning import make_root, write_root, write_tls

EDGE_AGENT = Path(sys.executable).parent / "edge-agent"
ROOT_DIR = Path(__file__).resolve().parents[2]
Setup = Callable[[Path], dict[str, Any]]


def bundle_config(port: int) -> dict[str, Any]:
    """A device.toml naming every kind of file, all of them genuine."""
    return {
        "device_id": "pi-kitchen",
        "state_dir": "state",
        "trust": {"root_file": "root.json"},
        "mqtt": {
            "url": "mqtts://127.0.0.1:1",  # nothing listens: the checks come first
            "password_file": "mqtt-password",
            "ca_file": "tls/ca.crt",
            "client_cert": "tls/client.crt",
            "client_key": "tls/client.key",
            "reconnect_max_s": 1,
        },
        "server": {"listen": f"{LOCALHOST}:{port}", "token_file": "api-token"},
    }


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    """A device bundle: root, TLS files, secrets."""
    directory = (tmp_path / "etc").resolve()
    write_root(directory / "root.json")
    write_tls(directory / "tls")
    (directory / "mqtt-password").write_text(PASSWORD + "\n")
    (directory / "api-token").write_text(TOKEN + "\n")
    return directory


def edge_agent(directory: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run the installed `edge-agent` in `directory` (where device.toml is)."""
    return subprocess.run(
        [str(EDGE_AGENT), *argv],
        cwd=directory,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# --- the broken files ----------------------------------------------------------------------

ROOT, CA, CERT, KEY = "trust.root_file", "mqtt.ca_file", "mqtt.client_cert", "mqtt.client_key"
PW, TOKEN_FILE, STATE, SOCK = (
    "mqtt.password_file",
    "server.token_file",
    "state_dir",
    "server.socket",
)
DIR = object()  # make a directory there
Content = bytes | str | object | Callable[[Path], bytes]


def put(directory: Path, name: str, content: Content) -> Path:
    """Create `name` under `directory` with `content` (a function of the bundle, or DIR)."""
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if content is DIR:
        path.mkdir()
        return path
    data = content(directory) if callable(content) else content
    path.write_bytes(data.encode() if isinstance(data, str) else bytes(data))  # type: ignore[arg-type]
    return path


def key_is(key: str, content: Content) -> Setup:
    """Point `key` at a new file holding `content`."""
    return lambda d: {key: str(put(d, f"bad/{key}", content))}


def value(key: str, setting: str) -> Setup:
    """Set `key` to `setting` as it is."""
    return lambda _d: {key: setting}


def in_state(name: str, content: Content) -> Setup:
    """Create `name` inside the state directory (state/ next to device.toml)."""
    return lambda d: (put(d / "state", name, content), {})[1]


def stranger_signed(_d: Path) -> bytes:
    return make_root().signed(make_root().root_keys[0])


def below_threshold(_d: Path) -> bytes:
    trust = make_root(root_threshold=2)
    return trust.signed(trust.root_keys[0])


def tampered(_d: Path) -> bytes:
    envelope = Envelope.from_bytes(make_root().signed())
    signed = {**envelope.signed, "version": 7}  # the signatures no longer cover it
    return Envelope(signed=signed, signatures=envelope.signatures).to_bytes()


def not_a_root(_d: Path) -> bytes:
    key = make_root().root_keys[0]
    return Envelope(signed={"_type": "release", "version": 1}).sign(key).to_bytes()


def client_key(d: Path) -> bytes:
    return (d / "tls" / "client.key").read_bytes()


def client_cert(d: Path) -> bytes:
    return (d / "tls" / "client.crt").read_bytes()


def encrypted_key(_d: Path) -> bytes:
    key = issue_client_cert(make_ca(), "x").key
    encryption = serialization.BestAvailableEncryption(b"passphrase")
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def another_key(d: Path) -> bytes:
    return write_key(issue_client_cert(make_ca(), "other").key, d / "other.key").read_bytes()


def listening(_d: Path) -> dict[str, Any]:
    """server.listen on a port another process listens on (kept open until the test ends)."""
    holder = socket.socket()
    holder.bind((LOCALHOST, 0))
    holder.listen()
    HELD.append(holder)
    return {"server.listen": f"{LOCALHOST}:{holder.getsockname()[1]}"}


HELD: list[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_held() -> Iterator[None]:
    yield
    while HELD:
        HELD.pop().close()


def case(name: str, setup: Setup, key: str, expected: str) -> Any:
    """One row: what to break, the key the sentence must name, a part of the sentence."""
    return pytest.param(setup, key, expected, id=name)


SIGNED_ROOT = "is not a valid signed root"
NOT_CERT, NOT_KEY = "is not a PEM certificate", "is not a PEM private key"
CASES = [
    case("root-not-json", key_is(ROOT, "not json at all"), ROOT, SIGNED_ROOT),
    case("root-empty", key_is(ROOT, ""), ROOT, "is empty"),
    case("root-huge", key_is(ROOT, b"{" * (2 << 20)), ROOT, "is larger than"),
    case("root-unsigned", key_is(ROOT, '{"signed": {}, "signatures": []}'), ROOT, SIGNED_ROOT),
    case("root-wrong-key", key_is(ROOT, stranger_signed), ROOT, "signature"),
    case("root-threshold", key_is(ROOT, below_threshold), ROOT, "signature"),
    case("root-tampered", key_is(ROOT, tampered), ROOT, "signature"),
    case("root-wrong-type", key_is(ROOT, not_a_root), ROOT, "'release'"),
    case("root-is-dir", key_is(ROOT, DIR), ROOT, "is a directory, not a file"),
    case("ca-not-pem", key_is(CA, "CA"), CA, NOT_CERT),
    case("ca-empty", key_is(CA, ""), CA, "is empty"),
    case("ca-is-a-key", key_is(CA, client_key), CA, NOT_CERT),
    case("ca-truncated", key_is(CA, "-----BEGIN CERTIFICATE-----\n"), CA, NOT_CERT),
    case("ca-is-dir", key_is(CA, DIR), CA, "is a directory, not a file"),
    case("cert-not-pem", key_is(CERT, "CERT"), CERT, NOT_CERT),
    case("cert-is-a-key", key_is(CERT, client_key), CERT, NOT_CERT),
    case("key-not-pem", key_is(KEY, "KEY"), KEY, NOT_KEY),
    case("key-is-a-cert", key_is(KEY, client_cert), KEY, NOT_KEY),
    case("key-encrypted", key_is(KEY, encrypted_key), KEY, "is encrypted"),
    case("key-mismatch", key_is(KEY, another_key), KEY, "does not belong to the certificate"),
    case("password-huge", key_is(PW, "p" * 70_000), PW, "is larger than"),
    case("password-is-dir", key_is(PW, DIR), PW, "cannot read"),
    case("password-empty", key_is(PW, ""), PW, "is empty"),
    case("password-binary", key_is(PW, b"\xff\xfe"), PW, "is not UTF-8"),
    case("token-missing", value(TOKEN_FILE, "missing"), TOKEN_FILE, "cannot read"),
    case("state-dir-is-file", key_is(STATE, "x"), STATE, "is not a directory"),
    case("state-dir-in-a-file", value(STATE, "device.toml/state"), STATE, "cannot be created"),
    case("models-is-file", in_state("models", "x"), STATE, "models is not a directory"),
    case("spool-is-file", in_state("spool", "x"), STATE, "spool is not a directory"),
    case("state-json-is-dir", in_state("state.json", DIR), STATE, "state.json is a directory"),
    case("state-json-corrupt", in_state("state.json", "{"), STATE, "state.json is unreadable"),
    case("state-json-wrong", in_state("state.json", "[]"), STATE, "does not hold an agent state"),
    case("stored-root-corrupt", in_state("trust/root.json", "{}"), STATE, f"json {SIGNED_ROOT}"),
    case("stored-root-is-dir", in_state("trust/root.json", DIR), STATE, "json is a directory"),
    case("socket-dir-missing", value(SOCK, "nowhere/agent.sock"), SOCK, "does not exist"),
    case("socket-is-file", key_is(SOCK, "x"), SOCK, "is not a socket"),
    case("listen-taken", listening, "server.listen", "is already in use"),
    case(
        "listen-not-local", value("server.listen", "192.0.2.1:8080"), "server.listen", "192.0.2.1"
    ),
]


def test_the_genuine_bundle_passes(bundle: Path) -> None:
    write(bundle, bundle_config(free_port()))

    result = edge_agent(bundle, "check-config", "device.toml")

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize(("setup", "key", "expected"), CASES)
def test_a_broken_file_is_one_sentence_naming_the_file_and_the_key(
    bundle: Path, command: str, setup: Setup, key: str, expected: str
) -> None:
    write(bundle, changed(bundle_config(free_port()), setup(bundle)))
    argv = ["check-config", "--config", "device.toml"] if command == "check-config" else []
    argv = argv or ["run", "--config", "device.toml", "--log-level", "debug"]

    result = edge_agent(bundle, *argv)

    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"edge-agent: device.toml: {key}: "), lines[0]
    assert expected in lines[0]


@pytest.mark.parametrize(
    ("option", "setup", "expected"),
    [
        pytest.param(
            "--state-dir", lambda d: str(put(d, "f", "x")), "is not a directory", id="state"
        ),
        pytest.param(
            "--socket", lambda d: str(d / "nowhere" / "s.sock"), "does not exist", id="socket"
        ),
        pytest.param(
            "--listen", lambda d: listening(d)["server.listen"], "already in use", id="listen"
        ),
    ],
)
def test_a_bad_override_names_the_option(
    bundle: Path, option: str, setup: Callable[[Path], str], expected: str
) -> None:
    write(bundle, bundle_config(free_port()))

    result = edge_agent(bundle, "run", "--config", "device.toml", option, setup(bundle))

    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1
    assert result.stderr.startswith(f"edge-agent: {option}: "), result.stderr
    assert expected in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_an_expired_root_is_a_note_not_an_error(bundle: Path) -> None:
    # The clock may be what is wrong (a board without a battery): the device must still serve.
    write_root(bundle / "old-root.json", make_root(expires_in=timedelta(days=-1)))
    write(bundle, changed(bundle_config(free_port()), {"trust.root_file": "old-root.json"}))

    result = edge_agent(bundle, "check-config", "device.toml")

    assert result.returncode == 0, result.stderr
    assert result.stderr.startswith("edge-agent: note: trust.root_file: ")
    assert "expired at" in result.stderr


def test_check_config_creates_nothing(bundle: Path) -> None:
    write(bundle, bundle_config(free_port()))
    before = sorted(p.relative_to(bundle) for p in bundle.rglob("*"))

    assert edge_agent(bundle, "check-config", "device.toml").returncode == 0

    assert sorted(p.relative_to(bundle) for p in bundle.rglob("*")) == before


def without_privileges(argv: list[str]) -> list[str]:
    """`argv` run so that file modes apply: as root, without the capabilities that skip them."""
    if os.geteuid() != 0:
        return argv
    drop = "-dac_override,-dac_read_search,-fowner"
    return ["setpriv", f"--inh-caps={drop}", f"--bounding-set={drop}", "--", *argv]


def mode(name: str, bits: int, **changes: Any) -> Setup:
    """Set the mode of a bundle file, or of a directory made for the purpose."""

    def make(directory: Path) -> dict[str, Any]:
        path = directory / name
        if not path.exists():
            path.mkdir(parents=True)
        path.chmod(bits)
        return changes

    return make


PERMISSION_CASES = [
    pytest.param(mode("root.json", 0), "trust.root_file", "Permission denied", id="root"),
    pytest.param(mode("tls/ca.crt", 0), "mqtt.ca_file", "Permission denied", id="ca"),
    pytest.param(mode("tls/client.key", 0), "mqtt.client_key", "Permission denied", id="key"),
    pytest.param(mode("mqtt-password", 0), "mqtt.password_file", "Permission denied", id="pw"),
    pytest.param(mode("api-token", 0), "server.token_file", "Permission denied", id="token"),
    pytest.param(mode("state", 0o500), "state_dir", "is not writable", id="state-dir"),
    pytest.param(mode("state/models", 0o500), "state_dir", "models is not writable", id="models"),
    pytest.param(
        mode("ro", 0o500, state_dir="ro/state"), "state_dir", "cannot be created", id="parent"
    ),
]


@pytest.mark.parametrize("command", ["check-config", "run"])
@pytest.mark.parametrize(("setup", "key", "expected"), PERMISSION_CASES)
def test_a_permission_problem_is_named(
    bundle: Path, command: str, setup: Setup, key: str, expected: str
) -> None:
    write(bundle, changed(bundle_config(free_port()), setup(bundle)))
    argv = [str(EDGE_AGENT), command, "--config", "device.toml"]
    try:
        result = subprocess.run(
            without_privileges(argv),
            cwd=bundle,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        for path in bundle.rglob("*"):  # so that pytest can clean up
            path.chmod(0o700)

    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"edge-agent: device.toml: {key}: "), lines[0]
    assert expected in lines[0]


@pytest.mark.parametrize(
    "template", sorted((ROOT_DIR / "device_configs").glob("*.toml")), ids=lambda t: t.stem
)
def test_every_template_passes_check_config_with_genuine_files(
    template: Path, tmp_path: Path
) -> None:
    write_root(tmp_path / "root.json")
    write_tls(tmp_path / "tls")
    (tmp_path / "tls" / "ca.crt").rename(tmp_path / "ca.crt")
    (tmp_path / "mqtt-password").write_text(PASSWORD + "\n")
    (tmp_path / "api-token").write_text(TOKEN + "\n")
    shutil.copyfile(template, tmp_path / "device.toml")
    # The machine-specific parts, as the unit sets them: this host's free port, a state dir.
    overrides = ["--listen", f"{LOCALHOST}:{free_port()}", "--state-dir", str(tmp_path / "s")]

    result = edge_agent(tmp_path, "check-config", "device.toml", *overrides)

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
