"""`edge-agent check-config` and the command line around it: summaries, errors, exit codes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from edge_agent.cli import main
from tests.agent.device_toml import (
    DELETE,
    EDGE_AGENT,
    PASSWORD,
    TOKEN,
    changed,
    full_config,
    write,
)
from tests.support.broker import free_port


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    """Run the installed `edge-agent check-config` from the file's directory."""
    return subprocess.run(
        [str(EDGE_AGENT), "check-config", path.name],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_config_prints_a_summary(config_dir: Path) -> None:
    port = free_port()  # check-config makes sure nothing else listens there
    result = check_config(
        write(config_dir, changed(full_config(), {"server.listen": f"0.0.0.0:{port}"}))
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"{config_dir / 'device.toml'}: OK"
    for expected in (
        "pi-kitchen",
        "mqtts://broker.example.com:8883 as kitchen",
        str(config_dir / "state"),
        f"http://0.0.0.0:{port}",
        "fraud, churn.v2",
    ):
        assert expected in result.stdout
    assert PASSWORD not in result.stdout
    assert "grpc" not in result.stdout  # off unless configured


def test_check_config_names_the_grpc_listener(config_dir: Path) -> None:
    data = changed(full_config(), {"server.listen": f"127.0.0.1:{free_port()}"})
    result = check_config(write(config_dir, changed(data, {"grpc.listen": "127.0.0.1:8081"})))

    assert result.returncode == 0, result.stderr
    assert "  grpc       127.0.0.1:8081" in result.stdout.splitlines()
    assert TOKEN not in result.stdout


def test_check_config_says_whether_the_endpoint_needs_a_token(config_dir: Path) -> None:
    data = changed(full_config(), {"server.listen": f"127.0.0.1:{free_port()}"})
    with_token = check_config(write(config_dir, data))
    assert with_token.returncode == 0, with_token.stderr
    assert (
        "  token      required: Authorization: Bearer (server.token_file), except /v2/health/*"
        in with_token.stdout.splitlines()
    )
    without = check_config(write(config_dir, changed(data, {"server.token_file": ""})))
    assert without.returncode == 0, without.stderr
    assert (
        "  token      none: every local process may call the endpoint"
        in without.stdout.splitlines()
    )


def test_check_config_rejects_a_bad_file_in_one_sentence(config_dir: Path) -> None:
    path = write(config_dir, changed(full_config(), {"server.max_batch_size": True}))

    result = check_config(path)

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr == ("edge-agent: device.toml: server.max_batch_size must be an integer\n")


def test_usage_errors_exit_2(config_dir: Path) -> None:
    for argv in (
        ["check-config"],
        ["run"],
        ["run", "--config", "x", "--listen", "a:1", "--socket", "s"],
    ):
        result = subprocess.run(
            [str(EDGE_AGENT), *argv], capture_output=True, text=True, timeout=120, check=False
        )
        assert result.returncode == 2, argv
        assert "usage: edge-agent" in result.stderr


def test_version_still_works() -> None:
    result = subprocess.run(
        [str(EDGE_AGENT), "--version"], capture_output=True, text=True, timeout=120, check=False
    )

    assert result.returncode == 0
    assert result.stdout.startswith("edge-agent ")


def test_run_with_a_bad_config_exits_1_before_starting(
    config_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(config_dir, changed(full_config(), {"mqtt.url": DELETE}))

    assert main(["run", "--config", str(path), "--log-level", "debug"]) == 1

    assert capsys.readouterr().err == (
        f"edge-agent: {path}: mqtt.url is required"
        " (or mqtt.urls, the nodes of a clustered broker)\n"
    )
