"""Fields other parts of the agent add to a report's `models.{m}.versions.{v}` objects."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

log = logging.getLogger(__name__)

# Drained at each report: {(model, version): {field: value}} (experiments/counters.py).
DetailSource = Callable[[], Mapping[tuple[str, str], Mapping[str, Any]]]


def add_details(
    models: dict[str, Any], sources: list[DetailSource], empty: Callable[[], dict[str, Any]]
) -> dict[str, Any]:
    """Merge every source's fields into `models`; a version not in it yet starts as `empty()`."""
    for source in sources:
        try:
            details = source()
        except Exception:  # a broken source must not cost the report
            log.exception("telemetry source %r failed", source)
            continue
        for (model, version), fields in details.items():
            versions = models.setdefault(model, {"versions": {}})["versions"]
            versions.setdefault(version, empty()).update(fields)
    return models
