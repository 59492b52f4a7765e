"""The registry home: its layout, and `model-registry init` which creates it.

```
registry-home/
  registry.toml          configuration (commented)
  root.json              the current signed root: provision devices with this file
  metadata/root/N.json   every root version ever signed
  keys/root/root-K.pem   root keys: move them offline after init
  keys/release.pem       the online release key
  secrets/               0700: the MQTT password, the local CLI token
  registry.db            SQLite records (unless storage.database names a PostgreSQL server)
  blobs/                 content-addressed model files
```
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from edge_common.files import make_private_dir, write_atomic
from edge_protocol import SigningKey, utc_now
from model_registry.config import CONFIG_NAME, RegistryConfig, load_config
from model_registry.errors import ConflictError, InvalidInputError
from model_registry.mqtt.credentials import generate_password
from model_registry.storage import Storage, open_storage
from model_registry.storage.postgres import redact
from model_registry.tokens import generate_token, hash_token
from model_registry.trust.key_files import save_private_key
from model_registry.trust.signing import ROOT_LIFETIME, make_root, sign_document

HOME_ENV = "MODEL_REGISTRY_HOME"
DEFAULT_HOME = "registry-home"
CLI_TOKEN_FILE = "secrets/cli-token"  # noqa: S105 - a file name
DEFAULT_DATABASE = "registry.db"
SERVE_FILE = "serve.json"  # written by a running `serve`: where its API listens

CONFIG_TEMPLATE = """\
# Model registry configuration. Every key is optional; the values shown are the defaults.
# Relative paths are relative to this file's directory (the registry home).

[api]
# Where the REST API listens. Keep it on loopback unless a TLS proxy fronts it.
listen = "127.0.0.1:8700"
# The URL devices use for HTTP artifact downloads; derived from `listen` when empty.
public_url = ""
# Largest model upload accepted, in MiB.
max_upload_mb = 256
# Largest uploaded .npz (evaluation set, calibration rows) once decompressed, in MiB.
max_dataset_mb = 64

[storage]
# SQLite file, or a postgresql:// DSN for several registry replicas.
database = "registry.db"
blobs = "blobs"

[mqtt]
# "embedded" starts a broker inside the registry (a lab or a laptop);
# fleets use mqtt://host:1883 or mqtts://host:8883 (mosquitto, EMQX, HiveMQ, VerneMQ).
url = "embedded"
embedded_listen = "127.0.0.1:1883"
# The broker URL written into device bundles; derived from the above when empty.
device_url = ""
username = "registry"
password_file = "secrets/mqtt-password"
# CA certificate that signed the broker's certificate (mqtts:// only).
ca_file = ""
topic_prefix = "edge/v1"
keepalive_s = 30
# Replicas on one PostgreSQL behind a load balancer, on a broker with shared subscriptions
# (mosquitto): true hands each device event and telemetry message to one replica only.
shared_subscriptions = false

[signing]
release_key = "keys/release.pem"
root_file = "root.json"
# Lifetimes of what the release key signs. Documents still in use are re-signed
# `resign_before_days` before they expire, checked every `resign_check_interval_s`.
release_expiry_days = 30
assignment_expiry_days = 30
resign_before_days = 7
resign_check_interval_s = 3600

[artifacts]
# Model files travel as retained MQTT messages of this size.
chunk_size_kib = 256

[deploy]
# A targeted device that has not reported a terminal state this long after a deployment
# counts as failed.
deadline_s = 600

[rollouts]
# How often the rollout controller looks at active rollouts (docs/registry.md, "Rollouts").
check_interval_s = 5.0

[fleet]
# Telemetry and events older than these many days are deleted, and only the newest
# `*_max_per_device` of each device are kept, by a pass every `prune_interval_s`.
# The last state of each device is always kept.
telemetry_retention_days = 7
telemetry_max_per_device = 25000
events_retention_days = 90
events_max_per_device = 1000
prune_interval_s = 600

[ingest]
# What each device may send: a token bucket of messages and one of payload bytes (KiB).
# Excess messages are dropped and counted as rate_limited.
messages_per_minute = 300
burst_messages = 10000
kib_per_minute = 4096
burst_kib = 16384
# Event details and a model's last_error are cut to `max_text_chars`; a stored event or
# state larger than its cap is dropped as malformed; telemetry over its cap loses its
# per-input feature summaries first.
max_text_chars = 1024
max_event_bytes = 16384
max_state_bytes = 65536
max_telemetry_bytes = 65536
# At most one log line about dropped device messages per this many seconds.
drop_log_interval_s = 60
# Received messages waiting to be stored, all devices together, in MiB; beyond it new
# messages are dropped and counted as overloaded.
backlog_mib = 256

[drift]
# Each feature of a model version is compared with its release's profile over the last
# `window_s` (population stability index), per device and fleet-wide, every `interval_s`;
# a window needs `min_samples` values to be judged: warn from `warn_psi`, alert from
# `alert_psi`.
window_s = 3600
min_samples = 200
warn_psi = 0.1
alert_psi = 0.25
interval_s = 60

[history]
# The dashboard's charts: telemetry merged into 1-minute points kept this many days, then
# into 1-hour points deleted after `hour_points_days`, by a pass every `compact_interval_s`.
minute_points_days = 1
hour_points_days = 30
compact_interval_s = 60
"""


@dataclass(frozen=True)
class InitResult:
    """What `init` created and must tell the operator once."""

    home: Path
    root_file: Path
    admin_token: str
    root_key_files: tuple[Path, ...]


def resolve_home(explicit: str | None) -> Path:
    """Return the home from `--home`, else $MODEL_REGISTRY_HOME, else ./registry-home."""
    return Path(explicit or os.environ.get(HOME_ENV) or DEFAULT_HOME).absolute()


async def init_home(
    home: Path,
    *,
    root_keys: int = 1,
    root_threshold: int = 1,
    passphrase: bytes | None = None,
    save_cli_token: bool = True,
    database: str = DEFAULT_DATABASE,
) -> InitResult:
    """Create a new registry home with keys, root v1, database and an admin token.

    `database` is what registry.toml's storage.database will say: a SQLite path in the home,
    or a postgresql:// URL of an empty database (or schema).
    """
    if not 1 <= root_threshold <= root_keys:
        raise InvalidInputError(
            f"root threshold {root_threshold} must be between 1 and the {root_keys} root key(s)"
        )
    await asyncio.to_thread(_refuse_non_empty, home)
    storage = open_storage(database if "://" in database else str(home / database))
    if "://" in database:
        # A server is checked before anything is written: one that cannot be reached, or that
        # holds another registry's records, leaves no half-made home behind.
        await _open_empty(storage, database)
    try:
        config, root_key_files = await asyncio.to_thread(
            _write_files, home, root_keys, root_threshold, passphrase, database
        )
        await storage.open()  # does nothing if it is open already
        token = generate_token()
        root_file = config.path(config.signing.root_file)
        await storage.add_root(1, await asyncio.to_thread(root_file.read_bytes))
        await storage.add_token("admin", "admin", hash_token(token), utc_now())
    finally:
        await storage.close()
    if save_cli_token:
        await asyncio.to_thread(write_atomic, home / CLI_TOKEN_FILE, token.encode(), mode=0o600)
    return InitResult(home, root_file, token, root_key_files)


async def _open_empty(storage: Storage, database: str) -> None:
    await storage.open()
    try:
        stored = await storage.roots()
    except BaseException:
        await storage.close()
        raise
    if stored:
        await storage.close()
        raise ConflictError(
            f"{redact(database)} already holds a registry (root v{stored[-1][0]}); "
            "init needs an empty database, or a schema of its own"
        )


def _refuse_non_empty(home: Path) -> None:
    if home.exists() and any(home.iterdir()):
        raise ConflictError(f"{home} already exists and is not empty; refusing to overwrite it")


def _write_files(
    home: Path, root_keys: int, root_threshold: int, passphrase: bytes | None, database: str
) -> tuple[RegistryConfig, tuple[Path, ...]]:
    _refuse_non_empty(home)
    _make_layout(home)
    text = CONFIG_TEMPLATE.replace(
        f'database = "{DEFAULT_DATABASE}"', f"database = {json.dumps(database)}"
    )
    # A password in the URL makes the file a secret (better: ~/.pgpass, docs/operations.md).
    mode = 0o600 if redact(database) != database else 0o644
    write_atomic(home / CONFIG_NAME, text.encode(), mode=mode, exclusive=True)
    config = load_config(home)
    root_key_files = _generate_keys(config, root_keys, root_threshold, passphrase)
    mqtt_password = generate_password().encode()
    write_atomic(config.path(config.mqtt.password_file), mqtt_password, mode=0o600)
    return config, root_key_files


def _make_layout(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    for sub in ("metadata/root", "blobs"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    for private in ("keys", "keys/root", "secrets"):
        make_private_dir(home / private)


def _generate_keys(
    config: RegistryConfig, count: int, threshold: int, passphrase: bytes | None
) -> tuple[Path, ...]:
    root_keys = [SigningKey.generate() for _ in range(count)]
    release_key = SigningKey.generate()
    paths = tuple(config.home / "keys" / "root" / f"root-{i + 1}.pem" for i in range(count))
    for key, path in zip(root_keys, paths, strict=True):
        save_private_key(key, path, passphrase)
    save_private_key(release_key, config.path(config.signing.release_key))
    root = make_root(1, root_keys, [release_key], root_threshold=threshold, expires=_root_expiry())
    signed = sign_document(root.to_dict(), root_keys)
    write_atomic(config.home / "metadata" / "root" / "1.json", signed, mode=0o644, exclusive=True)
    write_atomic(config.path(config.signing.root_file), signed, mode=0o644)
    return paths


def _root_expiry() -> datetime:
    return utc_now().replace(microsecond=0) + ROOT_LIFETIME
