"""Experiments on the device: an A/B split or a shadow of a second model version.

`routing` picks the variant of a request, `answers` remembers who answered what and scores
the application's feedback, `shadow` runs the shadow off the response path, `counters` keeps
the per-variant outcomes that telemetry sends upstream, and `Experiments` ties them to the
models being served. docs/agent.md ("Experiments") and docs/inference-api.md ("Experiments").
"""

from edge_agent.experiments.active import ActiveExperiment, Experiments
from edge_agent.experiments.settings import ExperimentSettings

__all__ = ["ActiveExperiment", "ExperimentSettings", "Experiments"]
