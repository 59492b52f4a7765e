"""The `[experiments]` table of device.toml (docs/configuration.md)."""

from __future__ import annotations

from dataclasses import dataclass


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
    shadow_queue: int = 64  # requests waiting for the shadow; beyond, the oldest is dropped
    max_feedback_items: int = 1_000  # items in one POST .../feedback
