"""The console scripts exist and run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


@pytest.mark.parametrize("script", ["edge-agent", "model-registry"])
def test_console_script_prints_help(script: str) -> None:
    result = subprocess.run(
        [str(BIN / script), "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert f"usage: {script}" in result.stdout


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_agent_commands_take_the_config_with_or_without_the_flag(
    command: str, tmp_path: Path
) -> None:
    missing = tmp_path / "device.toml"
    for args in ([str(missing)], ["--config", str(missing)]):
        result = subprocess.run(
            [str(BIN / "edge-agent"), command, *args],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert (result.returncode, result.stderr) == (1, f"edge-agent: {missing}: no such file\n")
