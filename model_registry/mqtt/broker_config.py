"""Files for running mosquitto 2.x as the fleet's broker: config, passwords, ACL and TLS material.

`model-registry broker-config --out DIR [--tls]` calls `write_broker_config` with the registry's
device list. Everything is generated from the same sources as the embedded broker (the password
hashes the registry stores and the rules in `acl.py`), so both brokers admit the same clients to
the same topics.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_protocol.topics import Topics
from model_registry.errors import ConflictError, InvalidInputError
from model_registry.fsutil import write_file_atomic
from model_registry.mqtt.acl import is_username, render_mosquitto_acl
from model_registry.mqtt.tls import issue_server_cert, load_ca, make_ca

CONFIG_NAME = "mosquitto.conf"
PASSWORD_NAME = "passwd"  # noqa: S105 (a file name, not a password)
ACL_NAME = "acl"
PERSISTENCE_DIR = "data"
CA_CERT_NAME, CA_KEY_NAME = "ca.crt", "ca.key"
SERVER_CERT_NAME, SERVER_KEY_NAME = "server.crt", "server.key"
CA_COMMON_NAME = "edge-model-runtime broker CA"
PRIVATE, PUBLIC = 0o600, 0o644
# What mosquitto_passwd writes: `$7$` PBKDF2-SHA512 (or the legacy `$6$`), base64 fields.
_HASH_PATTERN = re.compile(r"\$(7\$[0-9]+|6)\$[A-Za-z0-9+/]+={0,2}\$[A-Za-z0-9+/]+={0,2}")


@dataclass(frozen=True)
class BrokerConfigFiles:
    """Absolute paths of everything `write_broker_config` wrote; TLS paths are None without TLS."""

    config: Path
    password_file: Path
    acl_file: Path
    persistence_dir: Path
    ca_cert: Path | None = None
    ca_key: Path | None = None
    server_cert: Path | None = None
    server_key: Path | None = None


def write_broker_config(
    out_dir: Path,
    *,
    topics: Topics,
    listen_host: str,
    port: int,
    registry_user: str,
    registry_password_hash: str,
    devices: Iterable[tuple[str, str]],
    tls: bool,
    tls_hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    overwrite: bool = False,
    run_as_user: str | None = None,
) -> BrokerConfigFiles:
    """Write mosquitto.conf, passwd, acl and (with `tls`) a CA and server key pair into `out_dir`.

    `devices` are (device id, password hash) pairs. Existing files are a ConflictError unless
    `overwrite`; `run_as_user` adds mosquitto's `user` option (which account it drops root to).
    """
    out_dir = out_dir.resolve()
    _check_listener(listen_host, port, run_as_user)
    files = _plan(out_dir, tls)
    # Everything is generated before anything is written: bad input leaves no half directory.
    passwd = _password_file(registry_user, registry_password_hash, devices)
    contents = {
        files.password_file: (passwd.encode(), PRIVATE),
        files.acl_file: (render_mosquitto_acl(topics, registry_user).encode(), PUBLIC),
    }
    if tls:
        contents.update(_tls_material(files, tls_hosts))
    config = _mosquitto_conf(files, listen_host, port, run_as_user)
    contents[files.config] = (config.encode(), PUBLIC)
    _refuse_existing(contents, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    files.persistence_dir.mkdir(mode=0o700, exist_ok=True)
    for path, (data, mode) in contents.items():
        _write(path, data, mode, overwrite)
    return files


def _plan(out_dir: Path, tls: bool) -> BrokerConfigFiles:
    """The paths to write, all absolute (mosquitto resolves relative ones against its cwd)."""
    tls_files: dict[str, Path] = {}
    if tls:
        tls_files = {
            "ca_cert": out_dir / CA_CERT_NAME,
            "ca_key": out_dir / CA_KEY_NAME,
            "server_cert": out_dir / SERVER_CERT_NAME,
            "server_key": out_dir / SERVER_KEY_NAME,
        }
    return BrokerConfigFiles(
        config=out_dir / CONFIG_NAME,
        password_file=out_dir / PASSWORD_NAME,
        acl_file=out_dir / ACL_NAME,
        persistence_dir=out_dir / PERSISTENCE_DIR,
        **tls_files,
    )


def _refuse_existing(contents: dict[Path, tuple[bytes, int]], overwrite: bool) -> None:
    """Fail before writing anything, so a refused run leaves the directory as it was."""
    existing = [str(path) for path in contents if path.exists()]
    if existing and not overwrite:
        raise ConflictError(f"refusing to overwrite {', '.join(existing)} (pass overwrite)")


def _password_file(
    registry_user: str, registry_hash: str, devices: Iterable[tuple[str, str]]
) -> str:
    """`username:hash` lines; every name and hash is checked so none can inject a line."""
    entries = [(registry_user, registry_hash), *devices]
    seen: set[str] = set()
    for username, hashed in entries:
        if not is_username(username):
            raise InvalidInputError(f"{username!r} cannot be an MQTT username")
        if username in seen:
            raise InvalidInputError(f"MQTT username {username!r} appears twice")
        if not _HASH_PATTERN.fullmatch(hashed):  # fullmatch: `$` would allow a newline
            raise InvalidInputError(f"the password hash of {username!r} is not a mosquitto hash")
        seen.add(username)
    return "".join(f"{username}:{hashed}\n" for username, hashed in entries)


def _check_listener(host: str, port: int, run_as_user: str | None) -> None:
    # Whitespace or newlines would inject further options into mosquitto.conf.
    for label, value in (("listen host", host), ("user", run_as_user or "x")):
        if not value or any(char.isspace() or char == "#" for char in value):
            raise InvalidInputError(f"{label} {value!r} is not usable in mosquitto.conf")
    if not 1 <= port <= 65535:
        raise InvalidInputError(f"port {port} is not in 1..65535")


def _tls_material(files: BrokerConfigFiles, hosts: Sequence[str]) -> dict[Path, tuple[bytes, int]]:
    """The CA (the existing one, if any) and a new server key pair as four PEM files."""
    if not (files.ca_cert and files.ca_key and files.server_cert and files.server_key):
        raise AssertionError("TLS paths are planned whenever TLS is on")
    # Devices trust this CA: regenerating the files must not replace it, or every provisioned
    # device would stop trusting the broker.
    if files.ca_cert.exists() and files.ca_key.exists():
        ca = load_ca(files.ca_cert.read_bytes(), files.ca_key.read_bytes())
    else:
        ca = make_ca(CA_COMMON_NAME)
    server = issue_server_cert(ca, hosts)
    return {
        files.ca_key: (ca.key_pem(), PRIVATE),
        files.ca_cert: (ca.cert_pem(), PUBLIC),
        files.server_key: (server.key_pem(), PRIVATE),
        files.server_cert: (server.cert_pem(), PUBLIC),
    }


def _write(path: Path, data: bytes, mode: int, overwrite: bool) -> None:
    try:
        write_file_atomic(path, data, mode=mode, exclusive=not overwrite)
    except FileExistsError as e:
        raise ConflictError(f"refusing to overwrite {path} (pass overwrite)") from e


def _mosquitto_conf(
    files: BrokerConfigFiles, listen_host: str, port: int, run_as_user: str | None
) -> str:
    """The text of mosquitto.conf, each setting with the reason it is there."""
    sections = [_HEADER, _general(files, run_as_user), _listener(listen_host, port)]
    if files.ca_cert:
        sections.append(_tls(files))
    return "\n".join(sections)


_HEADER = """\
# mosquitto 2.x configuration generated by `model-registry broker-config`.
# Start it with `mosquitto -c <this file>`. Every path is absolute, so the working directory
# does not matter. Regenerate after provisioning devices, then reload passwords and ACL with
# `kill -HUP <mosquitto pid>`.
"""


def _general(files: BrokerConfigFiles, run_as_user: str | None) -> str:
    user = (
        f"# mosquitto started as root switches to this account, which must read the files here.\n"
        f"user {run_as_user}\n"
        if run_as_user
        else "# Started as root, mosquitto switches to the `mosquitto` account: give it read\n"
        "# access to passwd, acl and the TLS files, and write access to the data directory.\n"
    )
    return f"""\
# One set of security settings for every listener (there is one): simpler to audit.
per_listener_settings false
{user}
# Every client has credentials: devices use their device id and provisioned password.
allow_anonymous false
# username:hash lines in mosquitto_passwd's $7$ (PBKDF2-SHA512) format; kept private (0600).
password_file {files.password_file}
# Who reads and writes which topics (docs/protocol.md section 7), generated by the registry.
acl_file {files.acl_file}

# Retained roots, releases, assignments and artifact chunks, and devices' persistent sessions
# with their queued QoS 1 messages, must survive a broker restart: the registry republishes
# a retained document only when it changes.
persistence true
persistence_location {files.persistence_dir}/

# The registry is one subscriber to every device's state, events and telemetry. When the fleet
# reports at once (a broker restart, a deploy), messages wait in its queue while it catches up;
# past mosquitto's default of 1000 they are dropped. The byte cap still bounds any one client.
max_queued_messages 100000
max_queued_bytes 268435456
"""


def _listener(host: str, port: int) -> str:
    return f"""\
# The only listener devices and the registry connect to.
listener {port} {host}
"""


def _tls(files: BrokerConfigFiles) -> str:
    return f"""\
# TLS with a private CA: devices are provisioned with ca.crt and verify the broker against it.
# ca.key is only needed to issue the next server certificate: move it offline (and delete it
# here) once the broker runs. Passwords still authenticate clients; no client certificates.
cafile {files.ca_cert}
certfile {files.server_cert}
# The server's private key (0600), readable only by the account mosquitto runs as.
keyfile {files.server_key}
# The oldest TLS version accepted; TLS 1.3 is negotiated when both sides have it.
tls_version tlsv1.2
"""
