"""The `[experiments]` table of device.toml (docs/configuration.md)."""

from __future__ import annotations

from dataclasses import dataclass

from edge_agent.errors import ConfigError

MiB = 1024 * 1024


@dataclass(frozen=True)
class ExperimentSettings:
    """Bounds of what an experiment may hold on the device (`[experiments]`)."""

    # Model bytes all served versions may take together, both variants of every experiment
    # included (0: no budget). An experiment whose candidate would exceed it is refused.
    memory_budget_bytes: int = 0
    # A loaded session takes more memory than its file: each variant is counted as its
    # artifact size times this factor (onnxruntime's arena and the copies it makes).
    memory_per_model_byte: float = 2.0
    answers_kept: int = 16_384  # recent request ids kept to match feedback with
    shadow_queue: int = 64  # requests waiting for the shadow; beyond, new ones are dropped
    max_feedback_items: int = 1_000  # items in one POST .../feedback

    def __post_init__(self) -> None:
        for key, (low, high) in BOUNDS.items():
            name = key.replace("_mb", "_bytes")
            value = getattr(self, name) / (MiB if name != key else 1)
            if isinstance(getattr(self, name), bool) or not low <= value <= high:
                shown = f"{value:g}"
                raise ConfigError(f"experiments.{key} must be from {low} to {high}, got {shown}")


# Inclusive bounds of each setting, by its TOML key (the memory budget is written in MiB).
BOUNDS: dict[str, tuple[int, int]] = {
    "memory_budget_mb": (0, 1_048_576),
    "memory_per_model_byte": (1, 100),
    "answers_kept": (0, 1_000_000),
    "shadow_queue": (1, 100_000),
    "max_feedback_items": (1, 100_000),
}
