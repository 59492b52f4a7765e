"""device.toml: the agent's configuration file, read into the dataclasses of
`edge_agent.config.settings`.

Every mistake is a ConfigError naming the file, the dotted key and what was expected, so a bad
config fails at start (or in `edge-agent check-config`), not at the first update. Relative paths
are relative to the directory of the config file. Secrets (`password_file`, `token_file`) are read
here, so a missing secret is a config error too. docs/configuration.md lists every key.
"""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edge_agent.config.broker_section import mqtt_settings
from edge_agent.config.kinds import (
    INT,
    NOT_HOST_PORT,
    OPTIONAL_PATH,
    PATH,
    STRING,
    STRINGS,
    Kind,
    keys_of,
)
from edge_agent.config.settings import (
    DEFAULT_STATE_DIR,
    ArtifactSettings,
    DeviceConfig,
    MqttSettings,
    TelemetrySettings,
    UpdateSettings,
)
from edge_agent.config.source import (
    ConfigSource,
    check_url,
    construct,
    existing_file,
    read_secret,
)
from edge_agent.errors import ConfigError
from edge_agent.experiments.settings import ExperimentSettings
from edge_agent.runtime import RuntimeOptions
from edge_agent.server.settings import GrpcConfig, MiB, ServerConfig
from edge_common.listen import split_host_port
from edge_common.toml_file import ConfigFileError, load_toml
from edge_protocol.fields import is_valid_name

NAME_RULE = "letters, digits, '.', '_' or '-', starting with a letter or digit, at most 128"
MAX_FILE_BYTES = 1024 * 1024  # device.toml


# ServerConfig fields that are not TOML keys of the same name: `_SERVER_KEYS` set them, and
# `runtime` comes from its own [runtime] section.
_SERVER_DERIVED: tuple[str, ...] = ("host", "port", "unix_socket", "unix_socket_mode", "token")
_SERVER_DERIVED += ("max_body_bytes", "max_buffered_body_bytes")
_SERVER_KEYS = {
    "listen": STRING,  # -> host, port
    "socket": OPTIONAL_PATH,  # -> unix_socket
    "socket_mode": INT,  # -> unix_socket_mode
    "token_file": OPTIONAL_PATH,  # -> token, read from the file
    "max_body_mb": INT,  # -> max_body_bytes
    "max_buffered_body_mb": INT,  # -> max_buffered_body_bytes
}
_SERVER_RENAMED = {"socket": "unix_socket", "socket_mode": "unix_socket_mode"}
# ServerConfig names its fields in its errors; the operator needs the TOML key instead.
_SERVER_KEY_OF_FIELD = {
    "server.host": "server.listen",
    "server.port": "server.listen",
    "server.unix_socket": "server.socket",
    "server.unix_socket_mode": "server.socket_mode",
    "server.token": "server.token_file",
    "server.max_buffered_body_bytes": "server.max_buffered_body_mb",
    "grpc.host": "grpc.listen",
    "grpc.port": "grpc.listen",
    "grpc.unix_socket": "grpc.socket",
    "grpc.unix_socket_mode": "grpc.socket_mode",
}
_GRPC_KEYS = {
    "listen": STRING,  # -> host, port
    "socket": OPTIONAL_PATH,  # -> unix_socket
    "socket_mode": INT,  # -> unix_socket_mode
    "max_concurrent_rpcs": INT,
}
GRPC_EXTRA = "pip install 'edge-model-runtime[grpc]'"

# Field names someone may write instead of the TOML key (docs or code in hand).
_HINTS = {
    **_SERVER_KEY_OF_FIELD,
    "server.max_body_bytes": "server.max_body_mb",
    "server.keepalive_timeout_s": "server.idle_timeout_s",  # aiohttp's and nginx's name for it
    "server.keepalive_timeout": "server.idle_timeout_s",
    "mqtt.password": "mqtt.password_file",
    "telemetry.spool_max_bytes": "telemetry.spool_max_mb",
    "experiments.memory_budget_bytes": "experiments.memory_budget_mb",
    "root_file": "trust.root_file",
    "follow": "models.follow",
}

_TOP_KEYS = {"device_id": STRING, "state_dir": PATH}
_SECTIONS: dict[str, dict[str, Kind]] = {
    "trust": {"root_file": PATH},
    "mqtt": keys_of(MqttSettings, skip={"password"}) | {"password_file": OPTIONAL_PATH},
    "models": {"follow": STRINGS},
    "artifacts": keys_of(ArtifactSettings),
    "runtime": keys_of(RuntimeOptions),
    "server": keys_of(ServerConfig, skip={*_SERVER_DERIVED, "runtime", "grpc"}) | _SERVER_KEYS,
    "grpc": _GRPC_KEYS,
    "updates": keys_of(UpdateSettings),
    "telemetry": keys_of(TelemetrySettings, skip={"spool_max_bytes"}) | {"spool_max_mb": INT},
    "experiments": keys_of(ExperimentSettings, skip={"memory_budget_bytes"})
    | {"memory_budget_mb": INT},
}
_REQUIRED = {"": ("device_id",), "trust": ("root_file",)}  # and mqtt.url or mqtt.urls
# Inclusive bounds of numeric keys the dataclasses do not check themselves.
_LIMITS: dict[str, tuple[float, float]] = {
    "mqtt.keepalive_s": (1, 65_535),  # the MQTT keep-alive field is 16 bits
    "mqtt.reconnect_min_s": (0.1, 3600),
    "mqtt.reconnect_max_s": (0.1, 86_400),
    "mqtt.ack_timeout_s": (1, 3600),
    "server.max_body_mb": (1, 1024),  # ServerConfig's own bounds on max_body_bytes, in MiB
    "server.max_buffered_body_mb": (1, 65_536),  # ServerConfig's bounds, in MiB
    "updates.release_timeout_s": (1, 86_400),
    "updates.download_timeout_s": (1, 86_400),
    "updates.activation_timeout_s": (1, 86_400),
    "updates.probation_requests": (0, 1_000_000),
    "updates.probation_s": (0, 86_400),
    "updates.probation_max_error_rate": (0, 1),
    "updates.max_probation_restarts": (0, 100),
    "updates.probation_min_requests": (1, 1_000_000),
    "updates.probation_max_latency_ratio": (0, 1000),
    "updates.probation_latency_floor_ms": (0, 60_000),
    "updates.probation_max_class_share": (0, 1),
    "updates.write_retry_min_s": (0.01, 3600),
    "updates.write_retry_max_s": (0.01, 86_400),
    "telemetry.interval_s": (1, 86_400),
    "telemetry.spool_max_mb": (1, 65_536),
    "telemetry.ack_timeout_s": (1, 3600),
}


def supported_keys() -> list[str]:
    """Every dotted key a device.toml may contain, in file order."""
    return [*_TOP_KEYS] + [f"{name}.{key}" for name, keys in _SECTIONS.items() for key in keys]


def load_config(
    path: Path,
    *,
    state_dir: Path | None = None,
    listen: str | None = None,
    socket: Path | None = None,
) -> DeviceConfig:
    """Read and validate a device.toml; the keywords (from the command line) override the file."""
    src = ConfigSource(path, path.resolve().parent)
    data = _parse(src)
    top = _read_table(src, "", {k: v for k, v in data.items() if k not in _SECTIONS}, _TOP_KEYS)
    sections = {name: _section(src, data, name) for name in _SECTIONS}
    device_id = _device_id(src, top["device_id"])
    return DeviceConfig(
        source=path.resolve(),
        device_id=device_id,
        state_dir=_state_dir(top, state_dir),
        root_file=existing_file(src, "trust.root_file", sections["trust"]["root_file"]),
        mqtt=mqtt_settings(src, sections["mqtt"], device_id),
        follow=_follow(src, sections["models"].get("follow", ())),
        artifacts=_artifacts(src, sections["artifacts"]),
        server=_server(src, sections, listen, socket),
        updates=construct(src, UpdateSettings, sections["updates"]),
        telemetry=construct(src, TelemetrySettings, _in_bytes(sections["telemetry"], "spool_max")),
        experiments=construct(
            src, ExperimentSettings, _in_bytes(sections["experiments"], "memory_budget")
        ),
    )


def _state_dir(top: Mapping[str, Any], override: Path | None) -> Path:
    if override is not None:
        return override.absolute()  # from the command line: relative to the current directory
    state_dir: Path = top.get("state_dir", DEFAULT_STATE_DIR)
    return state_dir


def _parse(src: ConfigSource) -> dict[str, Any]:
    try:
        return load_toml(src.path, MAX_FILE_BYTES)
    except ConfigFileError as e:
        raise src.error(str(e)) from e


def _section(src: ConfigSource, data: Mapping[str, Any], name: str) -> dict[str, Any]:
    table = data.get(name, {})
    if not isinstance(table, dict):
        raise src.error(f"[{name}] must be a table")
    return _read_table(src, name, table, _SECTIONS[name])


def _read_table(
    src: ConfigSource, section: str, table: Mapping[str, Any], kinds: Mapping[str, Kind]
) -> dict[str, Any]:
    """Check each key of one table against `kinds`; return the converted values by TOML key."""
    values = {}
    for key, value in table.items():
        dotted = f"{section}.{key}" if section else key
        kind = kinds.get(key)
        if kind is None:
            raise src.error(_unknown(section, key, value, kinds))
        if not kind.accepts(value):
            raise src.error(f"{dotted} must be {kind.description}")
        limits = _LIMITS.get(dotted)
        if limits and not limits[0] <= value <= limits[1]:
            raise src.error(f"{dotted} must be between {limits[0]} and {limits[1]}, got {value}")
        values[key] = kind.convert(src.base, value)
    for key in _REQUIRED.get(section, ()):
        if key not in values:
            raise src.error(f"{section}.{key} is required".lstrip("."))
    return values


def _unknown(section: str, key: str, value: object, kinds: Mapping[str, Kind]) -> str:
    dotted = f"{section}.{key}" if section else key
    what = f"unknown section [{dotted}]" if isinstance(value, dict) else f"unknown key {dotted}"
    known = [*kinds] if section else [*kinds, *_SECTIONS]
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.7)  # most unknown keys are typos
    hint = _HINTS.get(dotted) or (f"{section}.{close[0]}".lstrip(".") if close else None)
    return f"{what}; did you mean {hint}?" if hint else f"{what} (see docs/configuration.md)"


def _device_id(src: ConfigSource, device_id: str) -> str:
    if not is_valid_name(device_id):
        raise src.error(f"device_id {device_id!r} is not a valid name ({NAME_RULE})")
    return device_id


def _follow(src: ConfigSource, names: tuple[str, ...]) -> tuple[str, ...]:
    for name in names:
        if not is_valid_name(name):
            raise src.error(f"models.follow: {name!r} is not a valid model name ({NAME_RULE})")
    return names


def _artifacts(src: ConfigSource, values: Mapping[str, Any]) -> ArtifactSettings:
    settings = ArtifactSettings(**values)
    if settings.http_url:
        check_url(src, "artifacts.http_url", settings.http_url, ("http", "https"))
    elif settings.transport == "http":
        raise src.error('artifacts.http_url is required when artifacts.transport = "http"')
    return settings


def _in_bytes(values: dict[str, Any], key: str) -> dict[str, Any]:
    """`values` with its `{key}_mb` (the TOML spelling) turned into `{key}_bytes`."""
    if f"{key}_mb" in values:
        values[f"{key}_bytes"] = values.pop(f"{key}_mb") * MiB
    return values


def _server(
    src: ConfigSource,
    sections: Mapping[str, dict[str, Any]],
    listen: str | None,
    socket: Path | None,
) -> ServerConfig:
    fields = _server_fields(src, sections["server"])
    if listen is not None:  # --listen: serve on TCP even if the file names a socket
        address = split_host_port(listen)
        if address is None:
            raise ConfigError(f"--listen: {listen!r} {NOT_HOST_PORT}")
        fields["host"], fields["port"] = address
        fields["unix_socket"] = None
    if socket is not None:
        fields["unix_socket"] = socket.absolute()
    fields["runtime"] = construct(src, RuntimeOptions, sections["runtime"])
    fields["grpc"] = _grpc(src, sections["grpc"])
    try:
        return ServerConfig(**fields)
    except ConfigError as e:
        key, sep, rest = str(e).partition(":")
        raise src.error(f"{_SERVER_KEY_OF_FIELD.get(key, key)}{sep}{rest}") from e


def _server_fields(src: ConfigSource, values: dict[str, Any]) -> dict[str, Any]:
    """ServerConfig's fields from the [server] keys: renamed, unit-converted, secrets read."""
    fields = {_SERVER_RENAMED.get(key, key): value for key, value in values.items()}
    if "listen" in fields:
        address = split_host_port(fields.pop("listen"))
        if address is None:
            raise src.error(f"server.listen: {values['listen']!r} {NOT_HOST_PORT}")
        fields["host"], fields["port"] = address
    if "max_body_mb" in fields:
        fields["max_body_bytes"] = fields.pop("max_body_mb") * MiB
    if "max_buffered_body_mb" in fields:
        fields["max_buffered_body_bytes"] = fields.pop("max_buffered_body_mb") * MiB
    token_file = fields.pop("token_file", None)
    if token_file is not None:
        fields["token"] = read_secret(src, "server.token_file", token_file)
    return fields


def _grpc(src: ConfigSource, values: Mapping[str, Any]) -> GrpcConfig:
    """The [grpc] section: off unless `listen` or `socket` is set (the socket wins)."""
    fields = {_SERVER_RENAMED.get(key, key): value for key, value in values.items()}
    if "listen" in fields:
        address = split_host_port(fields.pop("listen"))
        if address is None:
            raise src.error(f"grpc.listen: {values['listen']!r} {NOT_HOST_PORT}")
        fields["host"], fields["port"] = address
    if fields.get("unix_socket") is not None:
        fields.pop("port", None)  # as in [server]: a socket replaces the TCP listener
    try:
        config = GrpcConfig(**fields)
    except ConfigError as e:
        key, sep, rest = str(e).partition(":")
        raise src.error(f"{_SERVER_KEY_OF_FIELD.get(key, key)}{sep}{rest}") from e
    if config.enabled and importlib.util.find_spec("grpc") is None:
        raise src.error(f"[grpc] is set, but grpcio is not installed ({GRPC_EXTRA})")
    return config
