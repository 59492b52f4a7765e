"""device.toml: real files in tmp_path, loaded by the real loader and the real console script."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.loader import load_config
from edge_agent.config.settings import (
    ArtifactSettings,
    DeviceConfig,
    MqttSettings,
    TelemetrySettings,
    UpdateSettings,
)
from edge_agent.errors import ConfigError
from edge_agent.runtime import RuntimeOptions
from edge_agent.server import ServerConfig
from tests.agent.device_toml import (
    DELETE,
    PASSWORD,
    TOKEN,
    MiB,
    changed,
    full_config,
    minimal_config,
    write,
)


def test_a_full_config_loads_into_the_dataclasses(config_dir: Path) -> None:
    config = load_config(write(config_dir, full_config()))

    runtime = RuntimeOptions(3, 0, 2, ("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert config == DeviceConfig(
        source=config_dir / "device.toml",
        device_id="pi-kitchen",
        state_dir=config_dir / "state",
        root_file=config_dir / "root.json",
        mqtt=MqttSettings(
            url="mqtts://broker.example.com:8883",
            username="kitchen",
            password=PASSWORD,
            ca_file=config_dir / "tls/ca.crt",
            client_cert=config_dir / "tls/client.crt",
            client_key=config_dir / "tls/client.key",
            keepalive_s=45,
            topic_prefix="plant/edge",
            reconnect_min_s=2.0,
            reconnect_max_s=90.5,
            ack_timeout_s=75.0,
        ),
        follow=("fraud", "churn.v2"),
        artifacts=ArtifactSettings("http", "https://registry.example.com/api"),
        server=ServerConfig(
            host="0.0.0.0",  # noqa: S104 - the value under test
            port=9000,
            unix_socket=None,
            unix_socket_mode=0o600,
            token=TOKEN,
            max_body_bytes=4 * MiB,
            max_batch_size=16,
            max_queue_delay_ms=2.0,
            max_queue_size=64,
            max_request_batch=256,
            non_finite="allow",
            retry_after_s=3,
            shutdown_timeout_s=10.0,
            runtime=runtime,
        ),
        updates=UpdateSettings(60.0, 900.0, 600.0, 50, 45.5, 0.02, 3),
        telemetry=TelemetrySettings(interval_s=60.0, spool_max_bytes=8 * MiB),
    )
    assert isinstance(config.mqtt.reconnect_min_s, float)  # an int in TOML, a float here


def test_a_minimal_config_takes_the_defaults(config_dir: Path) -> None:
    config = load_config(write(config_dir, minimal_config()))

    assert config.state_dir == Path("/var/lib/edge-agent")
    assert config.mqtt == MqttSettings(url="mqtt://127.0.0.1:1883", username="pi-kitchen")
    assert config.follow == ()
    assert config.follows("anything")
    assert config.artifacts == ArtifactSettings()
    assert config.server == ServerConfig()
    assert config.updates == UpdateSettings()
    assert config.telemetry == TelemetrySettings()


def test_the_nodes_of_a_clustered_broker_are_tried_in_the_order_listed(config_dir: Path) -> None:
    nodes = ["mqtts://n2.example.com:8883", "mqtts://n3.example.com", "mqtts://n1.example.com"]
    data = changed(full_config(), {"mqtt.url": DELETE, "mqtt.urls": nodes})

    config = load_config(write(config_dir, data))

    assert config.mqtt.urls == tuple(nodes)
    assert config.mqtt.url == nodes[0]  # the first one is tried first


def test_one_url_is_a_list_of_one(config_dir: Path) -> None:
    config = load_config(write(config_dir, minimal_config()))

    assert config.mqtt.urls == ("mqtt://127.0.0.1:1883",)


def test_relative_paths_are_relative_to_the_config_file(
    config_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outside_root = elsewhere / "root.json"
    outside_root.write_text("{}")
    data = changed(full_config(), {"trust.root_file": str(outside_root), "server.socket": "a.sk"})
    write(config_dir, data)
    monkeypatch.chdir(tmp_path)

    config = load_config(Path("etc/device.toml"))

    assert config.source == config_dir / "device.toml"
    assert config.state_dir == config_dir / "state"
    assert config.root_file == outside_root  # absolute paths stay as they are
    assert config.mqtt.ca_file == config_dir / "tls/ca.crt"
    assert config.server.unix_socket == config_dir / "a.sk"


def test_empty_optional_paths_mean_not_set(config_dir: Path) -> None:
    data = changed(minimal_config(), {"mqtt.password_file": "", "mqtt.ca_file": ""})
    config = load_config(write(config_dir, changed(data, {"server.token_file": ""})))

    assert (config.mqtt.password, config.mqtt.ca_file, config.server.token) == (None, None, None)


def test_ipv6_listen_address(config_dir: Path) -> None:
    data = changed(minimal_config(), {"server.listen": "[::1]:8080"})
    server = load_config(write(config_dir, data)).server

    assert (server.host, server.port) == ("::1", 8080)


def test_grpc_is_off_by_default_and_on_when_given_an_address(config_dir: Path) -> None:
    assert not load_config(write(config_dir, minimal_config())).server.grpc.enabled

    data = changed(minimal_config(), {"grpc.listen": "[::1]:8081", "grpc.max_concurrent_rpcs": 8})
    grpc = load_config(write(config_dir, data)).server.grpc

    assert (grpc.enabled, grpc.host, grpc.port, grpc.max_concurrent_rpcs) == (True, "::1", 8081, 8)


def test_a_grpc_socket_replaces_its_tcp_listener(config_dir: Path) -> None:
    data = changed(minimal_config(), {"grpc.listen": "127.0.0.1:8081", "grpc.socket": "g.sock"})
    grpc = load_config(write(config_dir, data)).server.grpc

    assert (grpc.port, grpc.unix_socket, grpc.unix_socket_mode) == (
        None,
        config_dir / "g.sock",
        0o660,
    )


def test_command_line_overrides_win(
    config_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(config_dir, changed(full_config(), {"server.socket": "agent.sock"}))
    monkeypatch.chdir(tmp_path)
    cwd = tmp_path.resolve()

    config = load_config(path, state_dir=Path("var/state"), listen="[::1]:8081")
    assert config.state_dir == cwd / "var/state"  # command-line paths: relative to the cwd
    server = config.server
    assert (server.host, server.port, server.unix_socket) == ("::1", 8081, None)

    config = load_config(path, socket=Path("run/agent.sock"))
    assert config.server.unix_socket == cwd / "run/agent.sock"
    assert config.state_dir == config_dir / "state"


def test_a_bad_listen_override_names_the_option(config_dir: Path) -> None:
    with pytest.raises(ConfigError, match="--listen: 'nowhere'"):
        load_config(write(config_dir, minimal_config()), listen="nowhere")


BAD_CONFIGS = [
    pytest.param({"extra": {"a": 1}}, "unknown section [extra]", id="unknown-section"),
    pytest.param({"mqqt": {"url": "x"}}, "did you mean mqtt?", id="section-typo"),
    pytest.param({"colour": "red"}, "unknown key colour", id="unknown-top-key"),
    pytest.param({"server.max_batch": 8}, "unknown key server.max_batch", id="unknown-key"),
    pytest.param({"server.extra": {"a": 1}}, "unknown section [server.extra]", id="subtable"),
    pytest.param({"server.host": "::"}, "unknown key server.host", id="field-not-key"),
    pytest.param({"mqtt": "broker"}, "[mqtt] must be a table", id="section-not-table"),
    pytest.param({"mqtt.url": 1883}, "mqtt.url must be a string", id="int-for-string"),
    pytest.param(
        {"server.max_batch_size": "8"},
        "server.max_batch_size must be an integer",
        id="string-for-int",
    ),
    pytest.param(
        {"server.max_batch_size": 8.0},
        "server.max_batch_size must be an integer",
        id="float-for-int",
    ),
    pytest.param(
        {"server.max_queue_size": True}, "server.max_queue_size must be an integer", id="bool-int"
    ),
    pytest.param({"updates.probation_s": True}, "updates.probation_s must be a number", id="bool"),
    pytest.param({"telemetry.interval_s": "60"}, "telemetry.interval_s must be a number", id="s"),
    pytest.param({"telemetry.interval_s": float("nan")}, "telemetry.interval_s must be", id="nan"),
    pytest.param({"models.follow": "fraud"}, "models.follow must be an array", id="not-array"),
    pytest.param({"models.follow": ["a", 1]}, "models.follow must be an array", id="array-item"),
    pytest.param({"trust.root_file": 1}, "trust.root_file must be a non-empty path", id="path"),
    pytest.param({"trust.root_file": ""}, "trust.root_file must be a non-empty path", id="empty"),
    pytest.param(
        {"artifacts.transport": "ftp"},
        "artifacts.transport must be 'mqtt' or 'http'",
        id="not-a-choice",
    ),
    pytest.param({"device_id": DELETE}, "device_id is required", id="missing-device-id"),
    pytest.param({"trust.root_file": DELETE}, "trust.root_file is required", id="missing-root"),
    pytest.param({"trust": DELETE}, "trust.root_file is required", id="missing-trust"),
    pytest.param({"mqtt.url": DELETE}, "mqtt.url is required (or mqtt.urls", id="missing-url"),
    pytest.param(
        {"mqtt.urls": ["mqtts://b1:8883"]}, "set mqtt.url (one broker) or mqtt.urls", id="both"
    ),
    pytest.param({"mqtt.url": DELETE, "mqtt.urls": []}, "mqtt.urls must list 1 to 16", id="none"),
    pytest.param(
        {"mqtt.url": DELETE, "mqtt.urls": [f"mqtts://b{n}" for n in range(17)]},
        "mqtt.urls must list 1 to 16 URLs, got 17",
        id="too-many-urls",
    ),
    pytest.param(
        {"mqtt.url": DELETE, "mqtt.urls": "mqtts://b1"},
        "mqtt.urls must be an array",
        id="urls-not-array",
    ),
    pytest.param(
        {"mqtt.url": DELETE, "mqtt.urls": ["mqtts://b1", "http://b2"]},
        "mqtt.urls[1] 'http://b2' must look like mqtt://host",
        id="urls-scheme",
    ),
    pytest.param(
        {"mqtt.url": DELETE, "mqtt.urls": ["mqtts://b1", "mqtts://u:p@b2"]},
        "mqtt.urls[1] must not carry credentials",
        id="urls-credentials",
    ),
    pytest.param(
        {"mqtt.url": DELETE, "mqtt.urls": ["mqtts://b1:8883", "mqtts://b1:8883"]},
        "mqtt.urls lists 'mqtts://b1:8883' more than once",
        id="urls-repeated",
    ),
    pytest.param(
        {"mqtt.url": DELETE, "mqtt.urls": ["mqtts://b1", "mqtt://b2"]},
        "mqtt.urls mixes mqtt:// and mqtts://",
        id="urls-mixed-tls",
    ),
    pytest.param(
        {"mqtt.url": DELETE, "mqtt.urls": ["mqtt://b1", "mqtt://b2"]},
        "mqtt.ca_file needs an mqtts:// url, but mqtt.urls are mqtt://",
        id="urls-plain-with-tls-files",
    ),
    pytest.param({"mqtt.url": "http://broker:1883"}, "mqtt.url 'http:", id="url-scheme"),
    pytest.param({"mqtt.url": "mqtts://"}, "mqtt.url", id="url-without-host"),
    pytest.param({"mqtt.url": "mqtts://broker:99999"}, "mqtt.url", id="url-port"),
    pytest.param({"mqtt.url": "mqtts://u:p@broker"}, "mqtt.url", id="url-credentials"),
    pytest.param({"device_id": "pi kitchen"}, "device_id 'pi kitchen'", id="bad-device-id"),
    pytest.param({"models.follow": ["-fraud"]}, "models.follow: '-fraud'", id="bad-model-name"),
    pytest.param({"mqtt.password_file": "missing"}, "mqtt.password_file", id="no-password"),
    pytest.param({"mqtt.password_file": "tls"}, "mqtt.password_file", id="password-is-dir"),
    pytest.param({"mqtt.password_file": "empty"}, "mqtt.password_file", id="empty-password"),
    pytest.param({"mqtt.username": ""}, "mqtt.username", id="empty-username"),
    pytest.param({"mqtt.client_key": DELETE}, "mqtt.client_cert and mqtt.client_key", id="half"),
    pytest.param({"mqtt.client_cert": ""}, "mqtt.client_cert and mqtt.client_key", id="half-2"),
    pytest.param({"mqtt.ca_file": "nope.crt"}, "mqtt.ca_file", id="missing-ca"),
    pytest.param({"trust.root_file": "nope.json"}, "trust.root_file", id="missing-root-file"),
    pytest.param({"mqtt.url": "mqtt://broker:1883"}, "mqtt.ca_file needs an mqtts://", id="tls"),
    pytest.param({"mqtt.topic_prefix": "edge/+/v1"}, "mqtt.topic_prefix", id="topic-prefix"),
    pytest.param({"mqtt.keepalive_s": 0}, "mqtt.keepalive_s must be between", id="keepalive"),
    pytest.param({"mqtt.reconnect_min_s": 100}, "mqtt.reconnect_min_s", id="backoff-order"),
    pytest.param({"mqtt.ack_timeout_s": 0.5}, "mqtt.ack_timeout_s must be between", id="ack-low"),
    pytest.param({"mqtt.ack_timeout_s": 1e9}, "mqtt.ack_timeout_s must be between", id="ack-high"),
    pytest.param({"mqtt.ack_timeout_s": "soon"}, "mqtt.ack_timeout_s", id="ack-not-a-number"),
    pytest.param({"artifacts.http_url": DELETE}, "artifacts.http_url is required", id="http"),
    pytest.param({"artifacts.http_url": "ftp://registry"}, "artifacts.http_url", id="http-url"),
    pytest.param({"server.listen": "localhost"}, "server.listen", id="listen-no-port"),
    pytest.param({"server.listen": "::1:8080"}, "server.listen", id="listen-bare-ipv6"),
    pytest.param({"server.listen": "host:http"}, "server.listen", id="listen-port-name"),
    pytest.param({"server.listen": "host:70000"}, "server.listen", id="listen-port-range"),
    pytest.param({"server.listen": ""}, "server.listen", id="listen-empty"),
    pytest.param(
        {"runtime.execution_providers": ["Cuda"]},
        "runtime.execution_providers: 'Cuda' is not an onnxruntime provider",
        id="provider-name",
    ),
    pytest.param({"runtime.inference_workers": 0}, "runtime.inference_workers", id="workers"),
    pytest.param(
        {"server.max_batch_size": 0}, "server.max_batch_size: must be between", id="limit"
    ),
    pytest.param({"server.max_queue_delay_ms": 5000}, "server.max_queue_delay_ms", id="delay"),
    pytest.param({"server.non_finite": "ignore"}, "server.non_finite", id="non-finite"),
    pytest.param({"server.max_body_mb": 0}, "server.max_body_mb must be between", id="body"),
    pytest.param({"server.socket_mode": 0o1000}, "server.socket_mode", id="socket-mode"),
    pytest.param({"server.socket": "s" * 120}, "server.socket:", id="socket-too-long"),
    pytest.param({"server.token_file": "short-token"}, "server.token_file:", id="short-token"),
    pytest.param({"server.token_file": "missing"}, "server.token_file", id="missing-token"),
    pytest.param({"updates.probation_max_error_rate": 2}, "updates.probation_max", id="rate"),
    pytest.param({"updates.download_timeout_s": 0}, "updates.download_timeout_s", id="timeout"),
    pytest.param({"telemetry.spool_max_mb": 0}, "telemetry.spool_max_mb", id="spool"),
    pytest.param({"grpc.listen": "nowhere"}, "grpc.listen: 'nowhere' is not", id="grpc-listen"),
    pytest.param({"grpc.listen": 8081}, "grpc.listen must be a string", id="grpc-listen-int"),
    pytest.param({"grpc.socket": "s" * 120}, "grpc.socket:", id="grpc-socket-too-long"),
    pytest.param({"grpc.socket_mode": -1}, "grpc.socket_mode", id="grpc-socket-mode"),
    pytest.param({"grpc.max_concurrent_rpcs": 0}, "grpc.max_concurrent_rpcs", id="grpc-rpcs"),
    pytest.param({"grpc.port": 8081}, "unknown key grpc.port; did you mean grpc.listen?", id="gp"),
    pytest.param(
        {"server.listen": "127.0.0.1:8080", "grpc.listen": "127.0.0.1:8080"},
        "grpc.listen: 8080 is the HTTP port too",
        id="grpc-same-port",
    ),
]


@pytest.mark.parametrize(("changes", "expected"), BAD_CONFIGS)
def test_a_bad_config_names_the_file_and_the_key(
    config_dir: Path, changes: dict[str, Any], expected: str
) -> None:
    path = write(config_dir, changed(full_config(), changes))

    with pytest.raises(ConfigError) as info:
        load_config(path)

    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert expected in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(None, "no such file", id="missing-file"),
        pytest.param("device_id = ", "not valid TOML", id="syntax"),
        pytest.param("device_id = 'a'\ndevice_id = 'b'\n", "not valid TOML", id="duplicate-key"),
    ],
)
def test_an_unreadable_file_is_named(tmp_path: Path, text: str | None, expected: str) -> None:
    path = tmp_path / "device.toml"
    if text is not None:
        path.write_text(text)

    with pytest.raises(ConfigError, match=f"^{path}: {expected}"):
        load_config(path)
