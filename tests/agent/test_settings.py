"""ServerConfig and RuntimeOptions refuse bad values with the key and the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

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
