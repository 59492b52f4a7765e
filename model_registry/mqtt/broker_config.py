"""Files for running mosquitto 2.x as the fleet's broker: config, dynamic security and TLS.

`model-registry broker-config --out DIR [--tls]` calls `write_broker_config` with the registry's
device list. Everything is generated from the same sources as the embedded broker (the password
hashes the registry stores and the rules in `acl.py`), so both brokers admit the same clients to
the same topics. Credentials and access rules live in mosquitto's dynamic-security plugin, so the
registry adds a device to the running broker itself (`broker_admin`) and nothing is reloaded.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_common.files import write_atomic
from edge_protocol.topics import Topics
from model_registry.errors import ConflictError, InvalidInputError
from model_registry.mqtt import dynsec
from model_registry.mqtt.limits import MAX_PACKET_BYTES, MAX_PAYLOAD_BYTES
from model_registry.mqtt.tls import issue_server_cert, load_ca, make_ca

CONFIG_NAME = "mosquitto.conf"
PERSISTENCE_DIR = "data"
DYNSEC_NAME = "dynamic-security.json"  # in the data directory: mosquitto rewrites it
CA_CERT_NAME, CA_KEY_NAME = "ca.crt", "ca.key"
SERVER_CERT_NAME, SERVER_KEY_NAME = "server.crt", "server.key"
CA_COMMON_NAME = "edge-model-runtime broker CA"
PRIVATE, PUBLIC = 0o600, 0o644
PLUGIN_FILE = "mosquitto_dynamic_security.so"
# Where mosquitto 2.x packages install the plugin: Debian and Ubuntu (multiarch), Fedora,
# Alpine, Arch and the eclipse-mosquitto image, a source build.
PLUGIN_GLOBS = (
    f"/usr/lib/*-linux-gnu*/{PLUGIN_FILE}",
    f"/usr/lib64/{PLUGIN_FILE}",
    f"/usr/lib/{PLUGIN_FILE}",
    f"/usr/local/lib/{PLUGIN_FILE}",
    f"/usr/local/lib64/{PLUGIN_FILE}",
)


@dataclass(frozen=True)
class BrokerConfigFiles:
    """Absolute paths of everything `write_broker_config` wrote; TLS paths are None without TLS."""

    config: Path
    dynsec_file: Path
    persistence_dir: Path
    ca_cert: Path | None = None
    ca_key: Path | None = None
    server_cert: Path | None = None
    server_key: Path | None = None


def find_dynsec_plugin() -> Path | None:
    """The dynamic-security plugin of the mosquitto installed here, if any."""
    for pattern in PLUGIN_GLOBS:
        for found in sorted(glob.glob(pattern)):
            if Path(found).is_file():
                return Path(found)
    return None


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
    dynsec_plugin: Path,
    tls_hosts: Sequence[str] = ("localhost", "127.0.0.1"),
    overwrite: bool = False,
    run_as_user: str | None = None,
) -> BrokerConfigFiles:
    """Write mosquitto.conf, data/dynamic-security.json and (with `tls`) a CA and server keys.

    `devices` are (device id, `$7$` password hash) pairs. Existing files are a ConflictError
    unless `overwrite`; `run_as_user` adds mosquitto's `user` option (which account it drops
    root to), and when this runs as root the files mosquitto must read or write go to it.
    """
    out_dir = out_dir.resolve()
    _check_listener(listen_host, port, run_as_user)
    _check_plugin(dynsec_plugin)
    files = _plan(out_dir, tls)
    # Everything is generated before anything is written: bad input leaves no half directory.
    security = dynsec.config_file(topics, registry_user, registry_password_hash, devices)
    contents = {files.dynsec_file: (json.dumps(security, indent=2).encode() + b"\n", PRIVATE)}
    if tls:
        contents.update(_tls_material(files, tls_hosts))
    config = _mosquitto_conf(files, listen_host, port, run_as_user, dynsec_plugin)
    contents[files.config] = (config.encode(), PUBLIC)
    _refuse_existing(contents, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    files.persistence_dir.mkdir(mode=0o700, exist_ok=True)
    for path, (data, mode) in contents.items():
        _write(path, data, mode, overwrite)
    _hand_over(files, run_as_user)
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
        dynsec_file=out_dir / PERSISTENCE_DIR / DYNSEC_NAME,
        persistence_dir=out_dir / PERSISTENCE_DIR,
        **tls_files,
    )


def _refuse_existing(contents: dict[Path, tuple[bytes, int]], overwrite: bool) -> None:
    """Fail before writing anything, so a refused run leaves the directory as it was."""
    existing = [str(path) for path in contents if path.exists()]
    if existing and not overwrite:
        raise ConflictError(f"refusing to overwrite {', '.join(existing)} (pass overwrite)")


def _check_plugin(plugin: Path) -> None:
    text = str(plugin)
    if not plugin.is_absolute() or any(char.isspace() or char == "#" for char in text):
        raise InvalidInputError(
            f"dynamic-security plugin path {text!r} must be an absolute path without spaces or '#'"
        )


def _hand_over(files: BrokerConfigFiles, run_as_user: str | None) -> None:
    """As root, give the account mosquitto runs as what it reads (keys) and writes (data)."""
    if os.geteuid() != 0 or not run_as_user or run_as_user == "root":
        return
    try:
        account = pwd.getpwnam(run_as_user)
    except KeyError:
        return  # not an account here: the broker runs elsewhere, its operator sets owners there
    for path in (files.persistence_dir, files.dynsec_file, files.server_key):
        if path is not None:
            os.chown(path, account.pw_uid, account.pw_gid)


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
        write_atomic(path, data, mode=mode, exclusive=not overwrite)
    except FileExistsError as e:
        raise ConflictError(f"refusing to overwrite {path} (pass overwrite)") from e


def _mosquitto_conf(
    files: BrokerConfigFiles,
    listen_host: str,
    port: int,
    run_as_user: str | None,
    plugin: Path,
) -> str:
    """The text of mosquitto.conf, each setting with the reason it is there."""
    sections = [
        _HEADER,
        _general(files, run_as_user),
        _security(files, plugin),
        _limits(),
        _listener(listen_host, port),
    ]
    if files.ca_cert:
        sections.append(_tls(files))
    return "\n".join(sections)


_HEADER = """\
# mosquitto 2.x configuration generated by `model-registry broker-config`.
# Start it with `mosquitto -c <this file>`. Every path is absolute, so the working directory
# does not matter. Devices provisioned later need nothing here: the registry adds them to the
# running broker through the dynamic-security plugin.
"""


def _general(files: BrokerConfigFiles, run_as_user: str | None) -> str:
    user = (
        f"# mosquitto started as root switches to this account, which must read the files here\n"
        f"# and write the data directory.\n"
        f"user {run_as_user}\n"
        if run_as_user
        else "# Started as root, mosquitto switches to the `mosquitto` account: give it read\n"
        "# access to the TLS files, and write access to the data directory.\n"
    )
    return f"""\
# One set of security settings for every listener (there is one): simpler to audit.
per_listener_settings false
{user}
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


def _security(files: BrokerConfigFiles, plugin: Path) -> str:
    return f"""\
# Every client has credentials: devices use their device id and provisioned password.
allow_anonymous false
# Clients, passwords (PBKDF2-SHA512 hashes) and access rules (docs/protocol.md section 7) live
# in the dynamic-security plugin. Each device is bound to its device id as client id, so no
# client can take over another's session. The registry administers the plugin: it adds a device
# while the broker runs, and the plugin saves every change to its file.
plugin {plugin}
plugin_opt_config_file {files.dynsec_file}
"""


def _limits() -> str:
    return f"""\
# The largest payload of the protocol is a full artifact chunk ({MAX_PAYLOAD_BYTES} bytes, the
# 16 MiB cap of `artifacts.chunk_size_kib`). A bigger PUBLISH is dropped and not retained; a
# packet bigger than that plus room for its topic disconnects the client before it is read.
message_size_limit {MAX_PAYLOAD_BYTES}
max_packet_size {MAX_PACKET_BYTES}
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
