"""device.toml files for tests: whole and minimal configs, written as TOML, changed key by key."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

EDGE_AGENT = Path(sys.executable).parent / "edge-agent"
PASSWORD = "s3cret-mqtt-password"  # noqa: S105 - a test value
TOKEN = "0123456789abcdef-api-token"  # noqa: S105 - a test value
DELETE = object()
MiB = 1024 * 1024


def toml_value(value: Any) -> str:
    """One value in TOML syntax (JSON strings are valid TOML basic strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return repr(value)  # int, float, nan, inf


def to_toml(data: dict[str, Any]) -> str:
    """A document of top-level keys and one level of tables."""
    lines = [f"{k} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for name, table in data.items():
        if isinstance(table, dict):
            lines += [f"\n[{name}]", *(f"{k} = {toml_value(v)}" for k, v in table.items())]
    return "\n".join(lines) + "\n"


def full_config() -> dict[str, Any]:
    """Every key set, none to its default; paths relative to the config file."""
    return {
        "device_id": "pi-kitchen",
        "state_dir": "state",
        "trust": {"root_file": "root.json"},
        "mqtt": {
            "url": "mqtts://broker.example.com:8883",
            "username": "kitchen",
            "password_file": "mqtt-password",
            "ca_file": "tls/ca.crt",
            "client_cert": "tls/client.crt",
            "client_key": "tls/client.key",
            "keepalive_s": 45,
            "topic_prefix": "plant/edge",
            "reconnect_min_s": 2,
            "reconnect_max_s": 90.5,
            "ack_timeout_s": 75,
        },
        "models": {"follow": ["fraud", "churn.v2"]},
        "artifacts": {"transport": "http", "http_url": "https://registry.example.com/api"},
        "runtime": {
            "intra_op_threads": 3,
            "inter_op_threads": 0,
            "inference_workers": 2,
            "execution_providers": ["CUDAExecutionProvider", "CPUExecutionProvider"],
        },
        "server": {
            "listen": "0.0.0.0:9000",
            "socket": "",
            "socket_mode": 0o600,
            "token_file": "api-token",
            "max_body_mb": 4,
            "max_batch_size": 16,
            "max_queue_delay_ms": 2,
            "max_queue_size": 64,
            "max_request_batch": 256,
            "non_finite": "allow",
            "retry_after_s": 3,
            "shutdown_timeout_s": 10,
        },
        "updates": {
            "release_timeout_s": 60,
            "download_timeout_s": 900.0,
            "activation_timeout_s": 600,
            "probation_requests": 50,
            "probation_s": 45.5,
            "probation_max_error_rate": 0.02,
            "max_probation_restarts": 3,
        },
        "telemetry": {"interval_s": 60, "spool_max_mb": 8},
    }


def minimal_config() -> dict[str, Any]:
    """Only the required keys."""
    return {
        "device_id": "pi-kitchen",
        "trust": {"root_file": "root.json"},
        "mqtt": {"url": "mqtt://127.0.0.1:1883"},
    }


def write(directory: Path, data: dict[str, Any], name: str = "device.toml") -> Path:
    """Write `data` as TOML into `directory/name`."""
    path = directory / name
    path.write_text(to_toml(data))
    return path


def changed(data: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """`data` with dotted keys set (or removed, for DELETE)."""
    for dotted, value in changes.items():
        section, _, key = dotted.rpartition(".")
        table = data.setdefault(section, {}) if section else data
        if value is DELETE:
            del table[key]
        else:
            table[key] = value
    return data
