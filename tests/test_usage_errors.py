"""Usage errors of both command lines: the subcommand's own usage and the close name."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def _usage_error(script: str, *args: str) -> str:
    result = subprocess.run(
        [str(BIN / script), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


@pytest.mark.parametrize(
    ("args", "usage", "hint"),
    [
        (("push", "m.onnx", "--name", "m", "--quantise", "int8"), "push", "--quantize"),
        (("deploy", "m", "1", "--group", "g", "--wiat"), "deploy", "--wait"),
        (("deploy", "m", "1", "--grop", "g"), "deploy", "--group"),
        (("devices", "list", "--gruop", "g"), "devices list", "--group"),
        (("versions", "m", "--jsno"), "versions", "--json"),
    ],
)
def test_registry_flag_typo_names_the_subcommand_and_the_flag(
    args: tuple[str, ...], usage: str, hint: str
) -> None:
    stderr = _usage_error("model-registry", *args)
    assert f"usage: model-registry {usage} " in stderr
    assert "usage: model-registry [-h]" not in stderr
    assert f"did you mean {hint}?" in stderr


@pytest.mark.parametrize(
    ("args", "usage", "hint"),
    [
        (("deplyo",), "", "deploy"),
        (("devices", "lsit"), "devices", "list"),
        (("keys", "rotate-relase"), "keys", "rotate-release"),
        (("token", "create", "--role", "admn"), "token create", "admin"),
        (("push", "m.onnx", "--name", "m", "--quantize", "int9"), "push", "int8"),
    ],
)
def test_registry_choice_typo_suggests_the_close_one(
    args: tuple[str, ...], usage: str, hint: str
) -> None:
    stderr = _usage_error("model-registry", *args)
    assert f"usage: model-registry {usage}".rstrip() + " " in stderr
    assert f"did you mean {hint}?" in stderr


def test_unknown_positional_is_named_by_its_subcommand() -> None:
    stderr = _usage_error("model-registry", "models", "extra")
    assert "usage: model-registry models " in stderr
    assert "unrecognized arguments: extra" in stderr


def test_far_typo_gets_no_guess() -> None:
    stderr = _usage_error("model-registry", "push", "m.onnx", "--name", "m", "--zzzzzz")
    assert "unrecognized arguments: --zzzzzz" in stderr
    assert "did you mean" not in stderr


@pytest.mark.parametrize(
    ("args", "usage", "hint"),
    [
        (("rnu",), "", "run"),
        (("run", "--confg", "device.toml"), "run", "--config"),
        (("run", "--config", "device.toml", "--log-levle", "DEBUG"), "run", "--log-level"),
        (("check-config", "device.toml", "--stat-dir", "d"), "check-config", "--state-dir"),
        (("run", "--config", "d.toml", "--log-level", "DEBGU"), "run", "DEBUG"),
    ],
)
def test_agent_typos_name_the_subcommand_and_the_close_word(
    args: tuple[str, ...], usage: str, hint: str
) -> None:
    stderr = _usage_error("edge-agent", *args)
    assert f"usage: edge-agent {usage}".rstrip() + " " in stderr
    assert f"did you mean {hint}?" in stderr
