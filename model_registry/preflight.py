"""What `check-config` and `serve` check beyond the syntax of registry.toml: the files it names.

The release key must be an unencrypted Ed25519 PEM key; the MQTT password file a readable,
non-empty secret; the CA a PEM certificate; the root file a root signed by its own root keys;
the database a SQLite file (or a place one can be created) or a PostgreSQL server that
answers; blobs a writable directory; the listen addresses free. Each problem is one ConfigError
sentence naming registry.toml, the key and the path. What may only be the clock or a rotation
in progress is a note, not an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_common import toml_file
from edge_common.listen import listen_problem
from edge_common.toml_file import ConfigFileError
from edge_protocol import SigningKey, TrustedState, format_time
from edge_protocol.envelope import MAX_DOCUMENT_BYTES
from edge_protocol.errors import ProtocolError
from model_registry.config import CONFIG_NAME, RegistryConfig
from model_registry.errors import ConfigError
from model_registry.storage import PostgresStorage, open_storage
from model_registry.storage.postgres import probe

MAX_SECRET_BYTES = 64 * 1024
SQLITE_HEADER = b"SQLite format 3\x00"


@dataclass(frozen=True)
class Setting:
    """A setting being checked, as errors about it begin: `.../registry.toml: mqtt.ca_file`."""

    label: str

    def error(self, message: str) -> ConfigError:
        """A ConfigError about this setting."""
        return ConfigError(f"{self.label}: {message}")


def setting(config: RegistryConfig, key: str) -> Setting:
    """A dotted key of the home's registry.toml, or an option such as --listen."""
    return Setting(key if key.startswith("--") else f"{config.home / CONFIG_NAME}: {key}")


def check_home(config: RegistryConfig) -> list[str]:
    """Open every file registry.toml names; raise ConfigError, or return notes worth reading."""
    key = load_release_key(config)
    read_mqtt_password(config)
    if config.mqtt.ca_file:
        check_certificate(config.path(config.mqtt.ca_file), setting(config, "mqtt.ca_file"))
    notes = check_root_file(config, key)
    check_database(config)
    check_blobs(config)
    return notes


def read_small(path: Path, where: Setting, limit: int) -> bytes:
    """The bytes of a small file, or one sentence saying why it cannot be used."""
    try:
        return toml_file.read_small(path, limit)
    except ConfigFileError as e:
        raise where.error(str(e)) from e.__cause__


def load_release_key(config: RegistryConfig) -> SigningKey:
    """The online release key, or one sentence on what is wrong with signing.release_key."""
    path = config.path(config.signing.release_key)
    where = setting(config, "signing.release_key")
    data = read_small(path, where, MAX_SECRET_BYTES)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:  # serve runs unattended: nobody could type a passphrase
        raise where.error(f"{path} is encrypted; the release key is kept without one") from None
    except (ValueError, UnsupportedAlgorithm):
        raise where.error(f"{path} is not a PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        kind = type(key).__name__.removeprefix("_").removesuffix("PrivateKey") or "other"
        raise where.error(f"{path} holds a key of type {kind}; release keys are Ed25519")
    return SigningKey(key)


def read_mqtt_password(config: RegistryConfig) -> str:
    """The registry's own MQTT password, from mqtt.password_file."""
    path = config.path(config.mqtt.password_file)
    where = setting(config, "mqtt.password_file")
    try:
        password = read_small(path, where, MAX_SECRET_BYTES).decode("utf-8").strip()
    except UnicodeDecodeError:
        raise where.error(f"{path} is not UTF-8 text") from None
    if not password:
        raise where.error(f"{path} holds only white space")
    return password


def check_certificate(path: Path, where: Setting) -> None:
    """A CA file must hold at least one PEM certificate."""
    try:
        x509.load_pem_x509_certificates(read_small(path, where, MAX_DOCUMENT_BYTES))
    except ValueError:
        raise where.error(f"{path} is not a PEM certificate") from None


def check_root_file(config: RegistryConfig, release_key: SigningKey) -> list[str]:
    """The provisioning root must be a root; notes when it expired or omits the release key."""
    path = config.path(config.signing.root_file)
    where = setting(config, "signing.root_file")
    try:
        trust = TrustedState(read_small(path, where, MAX_DOCUMENT_BYTES), device_id="registry")
    except ProtocolError as e:
        raise where.error(f"{path} is not a valid signed root ({e})") from e
    root, notes = trust.root, []
    if trust.is_stale():
        expired = format_time(root.expires)
        notes.append(f"signing.root_file: root v{root.version} expired at {expired}")
    if release_key.keyid not in root.roles["release"].keyids:
        notes.append(
            f"signing.release_key: key {release_key.keyid[:12]}... is not a release key of "
            f"root v{root.version} in signing.root_file; devices refuse what it signs"
        )
    return notes


def check_database(config: RegistryConfig) -> None:
    """A SQLite database must be a SQLite file, or creatable in an existing directory; a
    PostgreSQL server must answer, with a schema no newer than this registry knows."""
    where = setting(config, "storage.database")
    try:
        storage = open_storage(config.database_location)  # refuses unknown URLs; opens nothing
        if isinstance(storage, PostgresStorage):
            probe(storage.url)
            return
    except ConfigError as e:
        raise where.error(str(e).removeprefix("database: ")) from e
    path = sqlite_path(config)
    if path is None:
        return
    if path.is_dir():
        raise where.error(f"{path} is a directory, not a database file")
    if not path.parent.is_dir():
        raise where.error(f"the directory of {path} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):  # SQLite writes its WAL files next to it
        raise where.error(f"{path.parent} is not writable by uid {os.geteuid()}")
    try:
        with path.open("rb") as handle:
            header = handle.read(len(SQLITE_HEADER))
    except FileNotFoundError:
        return  # serve creates it
    except OSError as e:
        raise where.error(f"cannot read {path} ({e.strerror or e})") from e
    if header and header != SQLITE_HEADER:  # an empty file is an empty database to SQLite
        raise where.error(f"{path} is not a SQLite database")


def sqlite_path(config: RegistryConfig) -> Path | None:
    """The SQLite file of the home, or None when the database is a server (a URL)."""
    location = config.database_location
    if location.startswith("sqlite://"):
        return Path(location.removeprefix("sqlite://"))
    return None if "://" in location else Path(location)


def check_blobs(config: RegistryConfig) -> None:
    """storage.blobs must be a writable directory, or creatable."""
    path = config.path(config.storage.blobs)
    where = setting(config, "storage.blobs")
    if path.exists() and not path.is_dir():
        raise where.error(f"{path} is not a directory")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise where.error(f"{path} cannot be created: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise where.error(f"{existing} is not writable by uid {os.geteuid()}")


def check_listen(host: str, port: int, where: Setting) -> None:
    """Bind and close a TCP address as the server would, so a taken port fails at once."""
    problem = listen_problem(host, port)
    if problem is not None:
        raise where.error(problem)
