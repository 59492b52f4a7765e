"""What `check-config` and `run` check beyond the syntax of device.toml: the files it names.

The loader checks types, ranges and that files exist; this module opens them. The trust root
must be a root signed by a threshold of its own root keys; the TLS files must be what `ssl`
loads; the state directory must be a writable directory whose saved state reads back; a unix
socket needs an existing directory; the listen address must be free. Each problem is one
ConfigError sentence naming the file, the key and the path. What may only be a wrong clock (an
expired root or certificate) is a note, not an error: a board that boots with its clock in 1970
must still serve its models.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from edge_agent.config.settings import DeviceConfig, MqttSettings
from edge_agent.errors import ConfigError
from edge_agent.storage.state import ROOT_FILE, STATE_FILE, load_state
from edge_common import toml_file
from edge_common.listen import listen_problem
from edge_common.toml_file import ConfigFileError
from edge_protocol import TrustedState
from edge_protocol.envelope import MAX_DOCUMENT_BYTES
from edge_protocol.errors import ProtocolError
from edge_protocol.fields import format_time

# Sub-directories of the state directory the agent creates (state.py, store.py, spool.py).
STATE_SUBDIRS = ("trust", "releases", "models", "downloads", "spool")


@dataclass(frozen=True)
class Setting:
    """The setting being checked, as errors about it begin: `device.toml: mqtt.ca_file`."""

    label: str

    def error(self, message: str) -> ConfigError:
        """A ConfigError about this setting."""
        return ConfigError(f"{self.label}: {message}")


@dataclass(frozen=True)
class Labels:
    """How errors name the file, and the settings the command line may have overridden."""

    source: str  # device.toml as the operator named it
    state_dir: str = "state_dir"
    listen: str = "server.listen"
    socket: str = "server.socket"

    def setting(self, key: str) -> Setting:
        """A dotted key of the file, or an option such as --state-dir (which needs no file)."""
        return Setting(key if key.startswith("--") else f"{self.source}: {key}")


def check_files(config: DeviceConfig, labels: Labels) -> list[str]:
    """Open every file the config names; raise ConfigError, or return notes worth reading."""
    notes = check_root(config.root_file, config.device_id, labels.setting("trust.root_file"))
    notes += check_tls(config.mqtt, labels)
    state_dir = labels.setting(labels.state_dir)
    check_state_dir(config.state_dir, state_dir)
    check_saved_state(config.state_dir, config.device_id, state_dir)
    if config.server.unix_socket is not None:
        check_socket_path(config.server.unix_socket, labels.setting(labels.socket))
    return notes


def read_small(path: Path, fail: Setting, limit: int = MAX_DOCUMENT_BYTES) -> bytes:
    """The bytes of a file expected to be small (at most `limit`), or one sentence why not."""
    try:
        return toml_file.read_small(path, limit)
    except ConfigFileError as e:
        raise fail.error(str(e)) from e.__cause__


def check_root(path: Path, device_id: str, fail: Setting) -> list[str]:
    """The provisioned root must be a root its own root keys signed."""
    trust = _parse_root(read_small(path, fail), device_id, path, fail)
    return _stale_note(trust, f"trust.root_file: {path}")


def _parse_root(data: bytes, device_id: str, path: Path, fail: Setting) -> TrustedState:
    try:
        return TrustedState(data, device_id=device_id)
    except ProtocolError as e:
        raise fail.error(f"{path} is not a valid signed root ({e})") from e


def _stale_note(trust: TrustedState, what: str) -> list[str]:
    if not trust.is_stale():
        return []
    expired = format_time(trust.root.expires)
    version = trust.root.version
    return [f"{what}: root v{version} expired at {expired}; updates wait for a newer root"]


# --- TLS -----------------------------------------------------------------------------------


def check_tls(mqtt: MqttSettings, labels: Labels) -> list[str]:
    """The CA and client files must be PEM of the right kind, and the key must fit the cert."""
    notes: list[str] = []
    if mqtt.ca_file is not None:
        ca = labels.setting("mqtt.ca_file")
        notes += _check_certificates(mqtt.ca_file, ca)
        try:
            ssl.create_default_context(cafile=mqtt.ca_file)
        except ssl.SSLError as e:
            raise ca.error(f"{mqtt.ca_file} is not usable as a CA ({e})") from e
    if mqtt.client_cert is not None and mqtt.client_key is not None:
        notes += _check_certificates(mqtt.client_cert, labels.setting("mqtt.client_cert"))
        key = labels.setting("mqtt.client_key")
        _check_private_key(mqtt.client_key, key)
        _check_key_pair(mqtt.client_cert, mqtt.client_key, key)
    return notes


def _check_certificates(path: Path, fail: Setting) -> list[str]:
    data = read_small(path, fail)
    try:
        certificates = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise fail.error(f"{path} is not a PEM certificate") from None
    now = datetime.now(UTC)
    expired = [c for c in certificates if c.not_valid_after_utc <= now]
    return [
        f"{fail.label}: {path}: certificate {c.subject.rfc4514_string()!r} expired at "
        f"{format_time(c.not_valid_after_utc)}; the TLS handshake will fail"
        for c in expired
    ]


def _check_private_key(path: Path, fail: Setting) -> None:
    data = read_small(path, fail)
    try:
        serialization.load_pem_private_key(data, password=None)
    except TypeError:  # encrypted: the agent runs unattended and cannot ask for a passphrase
        message = f"{path} is encrypted; the agent needs a key without a passphrase"
        raise fail.error(message) from None
    except (ValueError, UnsupportedAlgorithm):
        raise fail.error(f"{path} is not a PEM private key") from None


def _check_key_pair(cert: Path, key: Path, fail: Setting) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert, key, password=lambda: b"")  # never a terminal prompt
    except ssl.SSLError as e:
        message = f"{key} does not belong to the certificate in mqtt.client_cert ({e})"
        raise fail.error(message) from e


# --- the state directory ---------------------------------------------------------------------


def check_state_dir(state_dir: Path, fail: Setting) -> None:
    """The state directory (or what would hold it) must be a writable directory."""
    if state_dir.exists() and not state_dir.is_dir():
        raise fail.error(f"{state_dir} is not a directory")
    existing = state_dir
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise fail.error(f"{state_dir} cannot be created: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is" if existing == state_dir else f"cannot be created: {existing} is"
        raise fail.error(f"{state_dir} {what} not writable by uid {os.geteuid()}")
    for sub in STATE_SUBDIRS:
        path = state_dir / sub
        if path.exists() and not path.is_dir():
            raise fail.error(f"{path} is not a directory; move it away")
        if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
            raise fail.error(f"{path} is not writable by uid {os.geteuid()}")
    for name in (STATE_FILE, ROOT_FILE):
        if (state_dir / name).is_dir():
            raise fail.error(f"{state_dir / name} is a directory, not a file; move it away")


def check_saved_state(state_dir: Path, device_id: str, fail: Setting) -> None:
    """What an earlier run saved must read back: state.json, and the root it trusts."""
    if not state_dir.is_dir():
        return  # first start
    try:
        load_state(state_dir)  # reads only: StateStore() would create directories
    except ConfigError as e:
        raise fail.error(str(e)) from e
    stored = state_dir / ROOT_FILE
    if stored.exists():
        data = read_small(stored, fail)
        try:
            TrustedState(data, device_id=device_id)
        except ProtocolError as e:
            raise fail.error(
                f"{stored} is not a valid signed root ({e}); move it away to fall back to "
                "trust.root_file"
            ) from e


def check_socket_path(path: Path, fail: Setting) -> None:
    """A unix socket needs its directory; an existing non-socket file there would be lost."""
    directory = path.parent
    if not directory.is_dir():
        raise fail.error(f"the directory of {path} does not exist")
    with contextlib.suppress(FileNotFoundError):
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise fail.error(f"{path} exists and is not a socket")


# --- the listen address ----------------------------------------------------------------------


def check_listen(host: str, port: int, fail: Setting) -> None:
    """Bind and close the TCP address the endpoint will listen on, as its server would."""
    problem = listen_problem(host, port)
    if problem is not None:
        raise fail.error(problem)
