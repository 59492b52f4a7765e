"""The device configuration (`device.toml`) as frozen dataclasses.

`edge_agent.config.loader.load_config` reads and validates the TOML file into these; everything
else in the agent only sees the dataclasses. Durations carry their unit in the field name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edge_agent.errors import ConfigError
from edge_agent.experiments.settings import ExperimentSettings
from edge_agent.server.settings import ServerConfig
from edge_protocol import DEFAULT_PREFIX

ArtifactTransport = Literal["mqtt", "http"]
DEFAULT_STATE_DIR = Path("/var/lib/edge-agent")


@dataclass(frozen=True)
class MqttSettings:
    """How the agent reaches the broker (`[mqtt]`)."""

    url: str  # mqtt://host[:port] or mqtts://host[:port]: the first broker tried
    username: str  # defaults to the device id
    password: str | None = None  # read from `password_file`; never written back anywhere
    ca_file: Path | None = None  # CA that signed the broker's certificate (mqtts://)
    client_cert: Path | None = None  # optional TLS client certificate and key
    client_key: Path | None = None
    keepalive_s: int = 30
    topic_prefix: str = DEFAULT_PREFIX
    reconnect_min_s: float = 1.0  # jittered exponential backoff between these bounds
    reconnect_max_s: float = 60.0
    # A SUBACK, UNSUBACK or PUBACK not come after this long without a packet from the broker
    # cuts the connection (edge_common/mqtt/acks.py): the next attempt goes to the next URL.
    # Twice the keep-alive: a NATS node making a SUBSCRIBE's consumers reads nothing else
    # meanwhile, and paho's keep-alive already gives such a node that long.
    ack_timeout_s: float = 60.0
    # Every node of a clustered broker, tried in turn; empty means just `url`.
    urls: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.urls:
            object.__setattr__(self, "urls", (self.url,))  # frozen: set once, here


@dataclass(frozen=True)
class ArtifactSettings:
    """Where model files come from (`[artifacts]`)."""

    transport: ArtifactTransport = "mqtt"
    http_url: str = ""  # the registry's API, for transport = "http"


@dataclass(frozen=True)
class UpdateSettings:
    """Deadlines of the update steps and the probation that follows a swap (`[updates]`)."""

    release_timeout_s: float = 120.0  # assignment received -> release document verified
    download_timeout_s: float = 1800.0  # without progress for this long, the download fails
    activation_timeout_s: float = 300.0  # load, warm-up and self-test
    probation_requests: int = 20  # requests served by the new model before it is committed...
    probation_s: float = 30.0  # ...or this long, whichever comes first
    probation_max_error_rate: float = 0.05  # failed fraction of probation requests that rolls back
    max_probation_restarts: int = 2  # agent restarts during probation before rolling back
    # The latency and output rules compare with the previous version's recent answers here,
    # each once both versions answered at least `probation_min_requests` requests.
    probation_min_requests: int = 10  # capped at probation_requests, which ends probation

    @property
    def probation_enough(self) -> int:
        """Answers of each version the latency and output rules need."""
        if self.probation_requests > 0:
            return min(self.probation_min_requests, self.probation_requests)
        return self.probation_min_requests

    probation_max_latency_ratio: float = 3.0  # probation p99 / previous p99; 0 turns it off
    probation_latency_floor_ms: float = 5.0  # a previous p99 below this counts as this
    probation_max_class_share: float = 0.95  # most common predicted class; 1 turns it off
    # A state write refused by the disk (full, read-only) is retried, doubling between these.
    write_retry_min_s: float = 1.0
    write_retry_max_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.write_retry_min_s <= self.write_retry_max_s:
            raise ConfigError(
                "updates.write_retry_min_s must be above 0 and not above "
                f"updates.write_retry_max_s, got {self.write_retry_min_s} and "
                f"{self.write_retry_max_s}"
            )


@dataclass(frozen=True)
class TelemetrySettings:
    """Periodic reports upstream (`[telemetry]`)."""

    interval_s: float = 30.0
    spool_max_bytes: int = 16 * 1024 * 1024  # on-disk queue while the broker is unreachable
    ack_timeout_s: float = 30.0  # how long a sent message waits for the registry's ack
    # The registry is known to acknowledge (bundles of `devices add` say so): from the first
    # message on, nothing is deleted for want of an ack, not even before one ever arrived.
    registry_acks: bool = False


@dataclass(frozen=True)
class DeviceConfig:
    """Everything `edge-agent run` needs, validated."""

    source: Path  # the device.toml it was read from
    device_id: str
    state_dir: Path
    root_file: Path  # the provisioned trust anchor (`[trust] root_file`)
    mqtt: MqttSettings
    follow: tuple[str, ...] = ()  # models to follow; empty follows every assigned model
    artifacts: ArtifactSettings = field(default_factory=ArtifactSettings)
    server: ServerConfig = field(default_factory=ServerConfig)
    updates: UpdateSettings = field(default_factory=UpdateSettings)
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)
    experiments: ExperimentSettings = field(default_factory=ExperimentSettings)

    def follows(self, model: str) -> bool:
        """Return whether this device installs updates of `model`."""
        return not self.follow or model in self.follow
