"""What `model-registry push` prints for people: the release and its build report, aligned.

`--json` prints the release exactly as the API returns it; this is the readable form of the same
fields (docs/registry.md shows an example).
"""

from __future__ import annotations

from typing import Any

KiB = 1024
MiB = 1024 * KiB


def size_text(size: int) -> str:
    """`78.6 KiB`, or `12.3 MiB` from one MiB up."""
    if size >= MiB:
        return f"{size / MiB:.1f} MiB"
    return f"{size / KiB:.1f} KiB"


def push_summary(release: dict[str, Any]) -> list[str]:
    """The lines push prints: a headline, then `name  value` rows aligned on the values."""
    build: dict[str, Any] = release.get("build") or {}
    rows: list[tuple[str, str]] = []
    if release.get("label"):
        rows.append(("label", str(release["label"])))
    rows.append(("sha256", str(release["sha256"])))
    rows.append(("size", _size(release, build)))
    if build.get("quantization_reason"):
        rows.append(("quantization", str(build["quantization_reason"])))
    rows += _quality(build)
    if "accuracy_gate" in build:
        limit = build.get("accuracy_limit_points", "?")
        rows.append(("accuracy gate", f"{build['accuracy_gate']} (limit {limit} point)"))
    if "champion_gate" in build:
        rows.append(("champion gate", _champion(build)))
    if build.get("selftest_rows"):
        source = build.get("selftest_inputs", "")
        rows.append(("self-test", f"{build['selftest_rows']} rows, {source}".rstrip(", ")))
    width = max(len(name) for name, _value in rows)
    headline = (
        f"Pushed {release['model']} version {release['version']}, signed with the release key"
    )
    return [headline, *(f"  {name.ljust(width)}  {value}" for name, value in rows)]


def _size(release: dict[str, Any], build: dict[str, Any]) -> str:
    size = int(release["size"])
    before = build.get("fp32_size")
    if build.get("quantization", "none") == "none" or not isinstance(before, int):
        return size_text(size)
    precision = build.get("precision", "fp32")
    ratio = build.get("size_ratio", f"{size / before:.4f}" if before else "?")
    return f"{size_text(size)} int8, from {size_text(before)} {precision} (ratio {ratio})"


def _quality(build: dict[str, Any]) -> list[tuple[str, str]]:
    """Metrics before and after quantization, and how often the two models agree."""
    rows = []
    rows_text = f" on {build['eval_rows']} holdout rows" if build.get("eval_rows") else ""
    for metric in ("accuracy", "r2", "mae"):
        before, after = build.get(f"{metric}_fp32"), build.get(f"{metric}_int8")
        if before is None:
            continue
        value = f"fp32 {before}, int8 {after}" if after is not None else str(before)
        rows.append((metric.upper() if metric != "accuracy" else metric, value + rows_text))
    if "agreement" in build:
        rows.append(("agreement", _agreement(build)))
    return rows


def _champion(build: dict[str, Any]) -> str:
    verdict = str(build["champion_gate"])
    if "champion_version" not in build or "champion_score" not in build:
        return verdict
    return (
        f"{verdict} (this version {build.get('champion_gate_score')}, "
        f"champion v{build['champion_version']} {build['champion_score']})"
    )


def _agreement(build: dict[str, Any]) -> str:
    if "agreement_tolerance" not in build:
        return f"{build['agreement']} of rows get the same label from both"
    text = f"{build['agreement']} of rows within {build['agreement_tolerance']} of each other"
    if "max_abs_diff" in build:
        text += f" (largest difference {build['max_abs_diff']})"
    return text
