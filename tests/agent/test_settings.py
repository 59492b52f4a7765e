"""ServerConfig and RuntimeOptions refuse bad values with the key and the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.loader import load_config
from edge_agent.errors import ConfigError
from edge_agent.runtime import RuntimeOptions
from edge_agent.server import ServerConfig


def test_defaults_are_valid_and_local() -> None:
    config = ServerConfig()

    assert config.host == "127.0.0.1"
    assert config.port == 8080  # what device bundles write and the docs say
    assert config.token is None
    assert config.non_finite == "reject"
    assert config.max_body_bytes == 8 * 1024 * 1024
    policy = config.batch_policy()
    assert policy.max_queue_delay_s == pytest.approx(0.001)
    assert policy.max_concurrent_batches == config.runtime.inference_workers


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"port": 70000}, "server.port"),
        ({"port": "8000"}, "server.port"),
        ({"host": ""}, "server.host"),
        ({"unix_socket": Path("relative.sock")}, "server.unix_socket"),
        ({"unix_socket": Path("/" + "x" * 120)}, "server.unix_socket"),
        ({"token": "short"}, "server.token"),
        ({"token": "has a space in it, long enough"}, "server.token"),
        ({"token": "non-ascii-tökén-0123456789"}, "server.token"),
        ({"max_body_bytes": 10}, "server.max_body_bytes"),
        ({"max_batch_size": 0}, "server.max_batch_size"),
        ({"max_queue_size": True}, "server.max_queue_size"),
        ({"max_request_batch": -1}, "server.max_request_batch"),
        ({"max_queue_delay_ms": float("nan")}, "server.max_queue_delay_ms"),
        ({"max_queue_delay_ms": 5000}, "server.max_queue_delay_ms"),
        ({"non_finite": "ignore"}, "server.non_finite"),
        ({"retry_after_s": 0}, "server.retry_after_s"),
        ({"shutdown_timeout_s": -1}, "server.shutdown_timeout_s"),
        ({"runtime": {"intra_op_threads": 1}}, "server.runtime"),
        ({"max_connections": 0}, "server.max_connections"),
        ({"max_connections": 1.5}, "server.max_connections"),
        ({"max_buffered_body_bytes": 1 << 20}, "server.max_buffered_body_bytes: 1 MiB cannot"),
        ({"header_timeout_s": 0}, "server.header_timeout_s"),
        ({"body_timeout_s": float("inf")}, "server.body_timeout_s"),
        ({"idle_timeout_s": -1}, "server.idle_timeout_s"),
        ({"send_timeout_s": True}, "server.send_timeout_s"),
    ],
)
def test_server_config_names_the_bad_key(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        ServerConfig(**settings)


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"intra_op_threads": -1}, "runtime.intra_op_threads"),
        ({"inter_op_threads": 1000}, "runtime.inter_op_threads"),
        ({"inference_workers": 0}, "runtime.inference_workers"),
        ({"execution_providers": "CPUExecutionProvider"}, "runtime.execution_providers"),
        ({"execution_providers": ("cuda",)}, "runtime.execution_providers"),
    ],
)
def test_runtime_options_name_the_bad_key(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        RuntimeOptions(**settings)


def _device_toml(tmp_path: Path, server: str) -> Path:
    (tmp_path / "root.json").write_text("{}")
    path = tmp_path / "device.toml"
    path.write_text(
        'device_id = "d1"\n[trust]\nroot_file = "root.json"\n'
        f'[mqtt]\nurl = "mqtt://127.0.0.1:1883"\n[server]\n{server}\n'
    )
    return path


def test_client_limits_load_from_device_toml(tmp_path: Path) -> None:
    server = (
        "max_connections = 64\nmax_buffered_body_mb = 24\nheader_timeout_s = 2\n"
        "body_timeout_s = 12.5\nidle_timeout_s = 40\nsend_timeout_s = 9"
    )

    config = load_config(_device_toml(tmp_path, server)).server

    assert config.max_connections == 64
    assert config.max_buffered_body_bytes == 24 * 1024 * 1024
    assert (config.header_timeout_s, config.body_timeout_s) == (2.0, 12.5)
    assert (config.idle_timeout_s, config.send_timeout_s) == (40.0, 9.0)


@pytest.mark.parametrize(
    ("server", "message"),
    [
        ("max_buffered_body_mb = 0", "server.max_buffered_body_mb must be between 1 and 65536"),
        ("max_body_mb = 64", "server.max_buffered_body_mb: 32 MiB cannot hold one body"),
        ("max_buffered_body_bytes = 1", "did you mean server.max_buffered_body_mb?"),
        ("keepalive_timeout_s = 5", "did you mean server.idle_timeout_s?"),
        ("header_timeout = 5", "did you mean server.header_timeout_s?"),
        ("max_connection = 5", "did you mean server.max_connections?"),
        ("body_timeout_s = 0", "server.body_timeout_s: must be between 0.1 and 86400"),
        ("send_timeout_s = '30'", "server.send_timeout_s must be a number"),
    ],
)
def test_bad_client_limits_name_the_key(tmp_path: Path, server: str, message: str) -> None:
    path = _device_toml(tmp_path, server)

    with pytest.raises(ConfigError) as info:
        load_config(path)

    assert message in str(info.value)
