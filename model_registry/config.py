"""registry.toml: the registry home's configuration, read into frozen dataclasses.

Every key has a default, so a home works with an empty file; unknown keys and wrong types are
errors naming the file, the key and the expected type. Relative paths are relative to the home.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_common.broker_address import BrokerAddress, BrokerURLError
from edge_common.listen import split_host_port
from edge_common.toml_file import ConfigFileError, load_toml
from edge_protocol import Topics
from edge_protocol.errors import TopicError
from edge_protocol.messages import MAX_MESSAGE_BYTES
from model_registry.errors import ConfigError

CONFIG_NAME = "registry.toml"
EMBEDDED = "embedded"
MESSAGE_CAP_KIB = MAX_MESSAGE_BYTES // 1024  # docs/protocol.md section 8


@dataclass(frozen=True)
class ApiConfig:
    """The HTTP API."""

    listen: str = "127.0.0.1:8700"
    public_url: str = ""  # how devices reach the API for HTTP artifacts; derived from listen
    max_upload_mb: int = 256
    max_dataset_mb: int = 64  # an uploaded .npz (eval, calibration) once decompressed

    def __post_init__(self) -> None:
        parse_host_port(self.listen, "api.listen")
        if self.max_upload_mb < 1:
            raise ConfigError("api.max_upload_mb: must be at least 1")
        if not 1 <= self.max_dataset_mb <= 64 * 1024:
            raise ConfigError("api.max_dataset_mb: must be between 1 and 65536")


@dataclass(frozen=True)
class StorageConfig:
    """Where records and blobs live."""

    database: str = "registry.db"  # a path (SQLite) or a postgresql:// DSN
    blobs: str = "blobs"


@dataclass(frozen=True)
class MqttConfig:
    """The broker the registry publishes to, or the embedded one it starts."""

    url: str = EMBEDDED  # "embedded", mqtt://host:port or mqtts://host:port
    embedded_listen: str = "127.0.0.1:1883"
    device_url: str = ""  # the broker URL written into device bundles; derived when empty
    username: str = "registry"
    password_file: str = "secrets/mqtt-password"  # noqa: S105 - a path
    ca_file: str = ""
    topic_prefix: str = "edge/v1"
    keepalive_s: int = 30
    # Device messages through `$share/model-registry/...`: each goes to one replica of the group.
    shared_subscriptions: bool = False

    def __post_init__(self) -> None:
        parse_host_port(self.embedded_listen, "mqtt.embedded_listen")
        for key, url in (("mqtt.url", self.url), ("mqtt.device_url", self.device_url)):
            if url and url != EMBEDDED:
                try:
                    BrokerAddress.parse(url, key)
                except BrokerURLError as e:
                    also = " (or 'embedded')" if key == "mqtt.url" else ""
                    raise ConfigError(f"{e}{also}") from None
        try:
            Topics(self.topic_prefix)
        except TopicError as e:
            raise ConfigError(f"mqtt.topic_prefix: {e}") from e


@dataclass(frozen=True)
class SigningConfig:
    """Keys and the lifetimes of what they sign."""

    release_key: str = "keys/release.pem"
    root_file: str = "root.json"
    release_expiry_days: int = 30
    assignment_expiry_days: int = 30
    resign_before_days: int = 7  # re-sign documents still in use this long before they expire
    resign_check_interval_s: int = 3600

    def __post_init__(self) -> None:
        for name in ("release_expiry_days", "assignment_expiry_days"):
            if getattr(self, name) < 1:
                raise ConfigError(f"signing.{name}: must be at least 1")
        if not 0 < self.resign_before_days < self.release_expiry_days:
            raise ConfigError("signing.resign_before_days: must be between 1 and the expiry")


@dataclass(frozen=True)
class ArtifactsConfig:
    """How model files are cut for MQTT delivery."""

    chunk_size_kib: int = 256

    def __post_init__(self) -> None:
        if not 1 <= self.chunk_size_kib <= 16 * 1024:
            raise ConfigError("artifacts.chunk_size_kib: must be between 1 and 16384")


@dataclass(frozen=True)
class DeployConfig:
    """Deployment defaults."""

    deadline_s: int = 600  # a targeted device silent this long after a deploy counts as failed


@dataclass(frozen=True)
class RolloutsConfig:
    """The rollout controller (docs/registry.md, "Rollouts")."""

    check_interval_s: float | int = 5.0  # how often the controller looks at active rollouts

    def __post_init__(self) -> None:
        if not 0.1 <= self.check_interval_s <= 3600:
            raise ConfigError("rollouts.check_interval_s: must be between 0.1 and 3600")


@dataclass(frozen=True)
class ExperimentConfig:
    """How an experiment's verdict is reached (docs/registry.md, "Experiments")."""

    min_detectable_effect: float = 0.02  # the smallest accuracy difference worth detecting
    alpha: float = 0.05  # significance level of the two-proportion z-test
    power: float = 0.8  # chance to detect a difference of min_detectable_effect

    def __post_init__(self) -> None:
        for name in ("min_detectable_effect", "alpha", "power"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"experiments.{name}: must be between 0 and 1 (exclusive)")


@dataclass(frozen=True)
class FleetConfig:
    """What the registry keeps of what devices report."""

    telemetry_retention_days: int = 7  # older telemetry is deleted by the retention pass
    telemetry_max_per_device: int = (
        25_000  # newest reports kept per device (7 days at 30 s: 20,160)
    )
    events_retention_days: int = 90
    events_max_per_device: int = 1_000
    prune_interval_s: int = 600  # how often the retention pass runs

    def __post_init__(self) -> None:
        for name in ("telemetry_retention_days", "events_retention_days", "prune_interval_s"):
            if getattr(self, name) < 1:
                raise ConfigError(f"fleet.{name}: must be at least 1")
        for name in ("telemetry_max_per_device", "events_max_per_device"):
            if not 1 <= getattr(self, name) <= 10_000_000:
                raise ConfigError(f"fleet.{name}: must be between 1 and 10000000")


@dataclass(frozen=True)
class HistoryConfig:
    """How long the dashboard's history keeps each resolution (docs/dashboard.md, "History")."""

    minute_points_days: int = 1  # reports merge into 1-minute points, kept this long
    hour_points_days: int = 30  # then into 1-hour points, deleted after this long
    compact_interval_s: int = 60  # how often the history duty runs

    def __post_init__(self) -> None:
        if not 1 <= self.minute_points_days <= 366:
            raise ConfigError("history.minute_points_days: must be between 1 and 366")
        if not self.minute_points_days <= self.hour_points_days <= 3660:
            raise ConfigError(
                "history.hour_points_days: must be between minute_points_days and 3660"
            )
        if not 10 <= self.compact_interval_s <= 3600:
            raise ConfigError("history.compact_interval_s: must be between 10 and 3600")


@dataclass(frozen=True)
class IngestConfig:
    """How much the registry takes from each device, and how big what it stores may be.

    Each device has a token bucket of messages and one of payload bytes: a message passes
    when both have room, and is dropped (counted as `rate_limited`) otherwise. The bursts let a
    device replay a full offline spool (the agent's default is 16 MiB) at once.
    """

    messages_per_minute: int = 300  # sustained, per device; an agent sends about 2
    burst_messages: int = 10_000
    kib_per_minute: int = 4096  # sustained payload, per device
    burst_kib: int = 16 * 1024
    max_text_chars: int = 1024  # human text (event detail, a model's last_error) is cut to this
    max_event_bytes: int = 16 * 1024  # a stored event larger than this is dropped as malformed
    max_state_bytes: int = 64 * 1024  # likewise for a state message
    max_telemetry_bytes: int = 64 * 1024  # over it, feature summaries go; still over, dropped
    drop_log_interval_s: int = 60  # at most one log line of dropped messages per interval
    backlog_mib: int = 256  # received messages waiting for the database, all devices together

    def __post_init__(self) -> None:
        bounds = {
            "messages_per_minute": (1, 10**9),
            "burst_messages": (1, 10**9),
            "kib_per_minute": (1, 10**9),
            "burst_kib": (MESSAGE_CAP_KIB, 10**9),  # one message of the protocol's cap must fit
            "max_text_chars": (64, 65_536),
            "max_event_bytes": (1024, MESSAGE_CAP_KIB * 1024),
            "max_state_bytes": (1024, MESSAGE_CAP_KIB * 1024),
            "max_telemetry_bytes": (1024, MESSAGE_CAP_KIB * 1024),
            "drop_log_interval_s": (1, 86_400),
            "backlog_mib": (1, 64 * 1024),
        }
        for name, (low, high) in bounds.items():
            if not low <= getattr(self, name) <= high:
                raise ConfigError(f"ingest.{name}: must be between {low} and {high}")


@dataclass(frozen=True)
class DriftConfig:
    """When the registry calls the inputs or predictions of a model version drifted.

    docs/registry.md, "Drift": the population stability index of the window's counts against
    the release's profile, per device and fleet-wide, judged every `interval_s` by one replica.
    """

    window_s: int = 3600  # the sliding window of telemetry compared with the profile
    min_samples: int = 200  # values a window needs before its PSI is judged
    warn_psi: float = 0.1
    alert_psi: float = 0.25
    interval_s: int = 60  # how often the drift pass runs

    def __post_init__(self) -> None:
        for name, (low, high) in {
            "window_s": (60, 30 * 86_400), "min_samples": (1, 10**9), "interval_s": (1, 86_400),
        }.items():  # fmt: skip
            if not low <= getattr(self, name) <= high:
                raise ConfigError(f"drift.{name}: must be between {low} and {high}")
        if not 0 < self.warn_psi <= self.alert_psi <= 100:
            raise ConfigError("drift: needs 0 < warn_psi <= alert_psi <= 100")


@dataclass(frozen=True)
class RegistryConfig:
    """The whole registry.toml, plus the home directory it was read from."""

    home: Path
    api: ApiConfig = field(default_factory=ApiConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    signing: SigningConfig = field(default_factory=SigningConfig)
    artifacts: ArtifactsConfig = field(default_factory=ArtifactsConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)
    rollouts: RolloutsConfig = field(default_factory=RolloutsConfig)
    experiments: ExperimentConfig = field(default_factory=ExperimentConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)

    def path(self, relative: str) -> Path:
        """Resolve a configured path against the home."""
        return self.home / relative

    @property
    def database_location(self) -> str:
        """The storage DSN, with a relative SQLite path resolved against the home."""
        database = self.storage.database
        if "://" in database:
            return database
        return str(self.path(database))

    @property
    def topics(self) -> Topics:
        """The topic builder for the configured prefix."""
        return Topics(self.mqtt.topic_prefix)


_SECTIONS: dict[str, type[Any]] = {
    "api": ApiConfig,
    "storage": StorageConfig,
    "mqtt": MqttConfig,
    "signing": SigningConfig,
    "artifacts": ArtifactsConfig,
    "deploy": DeployConfig,
    "rollouts": RolloutsConfig,
    "experiments": ExperimentConfig,
    "fleet": FleetConfig,
    "ingest": IngestConfig,
    "drift": DriftConfig,
    "history": HistoryConfig,
}


def load_config(home: Path) -> RegistryConfig:
    """Read `home/registry.toml`, naming the file and key of any mistake."""
    path = home / CONFIG_NAME
    try:
        data = load_toml(path)
    except ConfigFileError as e:
        if e.missing:
            raise ConfigError(f"{path} not found: create a home with 'model-registry init'") from e
        raise ConfigError(f"{path}: {e}") from e
    unknown = set(data) - set(_SECTIONS)
    if unknown:
        section = sorted(unknown)[0]
        raise ConfigError(f"{path}: unknown section [{section}]{_close(section, _SECTIONS, '[]')}")
    sections = {
        name: _read_section(path, name, cls, data.get(name, {})) for name, cls in _SECTIONS.items()
    }
    return RegistryConfig(home=home.resolve(), **sections)


def _read_section(path: Path, name: str, cls: type[Any], values: Any) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in known:
            close = _close(key, known, f"{name}.")
            raise ConfigError(f"{path}: unknown key {name}.{key}{close}")
        expected = hints[key]
        if not _matches(value, expected):
            raise ConfigError(f"{path}: {name}.{key} must be {_type_name(expected)}")
    try:
        return cls(**values)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from e


def _close(name: str, known: typing.Iterable[str], spelling: str) -> str:
    """`; did you mean api.max_upload_mb?` for a typo (`spelling`: a prefix, or `[]`)."""
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.7)
    if not close:
        return ""
    shown = f"[{close[0]}]" if spelling == "[]" else spelling + close[0]
    return f"; did you mean {shown}?"


def _matches(value: Any, expected: Any) -> bool:
    if isinstance(expected, types.UnionType):
        return any(_matches(value, option) for option in typing.get_args(expected))
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:  # TOML's 1 is as good a number as 1.0
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, expected)


def _type_name(expected: Any) -> str:
    names = {int: "an integer", str: "a string", bool: "true or false", float: "a number"}
    return names.get(expected, str(expected))


def parse_host_port(text: str, key: str) -> tuple[str, int]:
    """Split `HOST:PORT`, raising ConfigError naming `key` when it is not one."""
    address = split_host_port(text)
    if address is None:
        raise ConfigError(f"{key}: {text!r} is not HOST:PORT (write IPv6 addresses as [::1]:8700)")
    return address


@dataclass(frozen=True)
class ServeOptions:
    """Command-line overrides of registry.toml."""

    listen: str | None = None
    mqtt_url: str | None = None
    embedded_broker: str | None = None  # HOST:PORT

    def __post_init__(self) -> None:
        # Checked as the [mqtt] url is: check-config must not call a malformed override OK.
        if self.mqtt_url and self.mqtt_url != EMBEDDED:
            try:
                BrokerAddress.parse(self.mqtt_url, "--mqtt-url")
            except BrokerURLError as e:
                raise ConfigError(str(e)) from None

    def api_listen(self, config: RegistryConfig) -> tuple[str, str]:
        """Where the API listens, and the setting that says so (for errors)."""
        if self.listen:
            return self.listen, "--listen"
        return config.api.listen, "api.listen"

    def embedded_listen(self, config: RegistryConfig) -> tuple[str, str] | None:
        """Where the embedded broker listens and the setting saying so; None for an external one."""
        if self.embedded_broker:
            return self.embedded_broker, "--embedded-broker"
        if (self.mqtt_url or config.mqtt.url) == EMBEDDED:
            return config.mqtt.embedded_listen, "mqtt.embedded_listen"
        return None
