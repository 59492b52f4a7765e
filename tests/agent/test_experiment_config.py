"""`[experiments]` in device.toml: defaults, the memory budget in MiB, bounds named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.loader import load_config
from edge_agent.errors import ConfigError
from edge_agent.experiments import ExperimentSettings
from tests.agent.device_toml import MiB, minimal_config, write


def _with(**experiments: Any) -> dict[str, Any]:
    return {**minimal_config(), "experiments": experiments}


def test_defaults_and_the_budget_in_mib(config_dir: Path) -> None:
    assert load_config(write(config_dir, minimal_config())).experiments == ExperimentSettings()
    config = load_config(write(config_dir, _with(memory_budget_mb=512, shadow_queue=8)))
    assert config.experiments.memory_budget_bytes == 512 * MiB
    assert config.experiments.shadow_queue == 8


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("memory_budget_mb", -1, "experiments.memory_budget_mb must be from 0 to 1048576"),
        ("shadow_queue", 0, "experiments.shadow_queue must be from 1 to 100000, got 0"),
        ("memory_per_model_byte", 0.5, "experiments.memory_per_model_byte must be from 1"),
        ("answers_kept", 10**7, "experiments.answers_kept must be from 0 to 1000000"),
        ("max_feedback_items", 0, "experiments.max_feedback_items must be from 1"),
        ("shadow_queue", "many", "experiments.shadow_queue"),
        ("memory_budget_bytes", 5, "memory_budget_mb"),
    ],
)
def test_a_bad_setting_names_the_file_and_the_key(
    config_dir: Path, key: str, value: Any, message: str
) -> None:
    path = write(config_dir, _with(**{key: value}))
    with pytest.raises(ConfigError, match=message) as refused:
        load_config(path)
    assert str(path) in str(refused.value)
