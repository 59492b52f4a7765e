"""What `model-registry push` prints: a readable summary for people, the release for `--json`.

Every figure of the summary is checked against the release the registry stored
(`versions NAME --json`), so the summary cannot say something the release does not.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.models import ModelSet, holdout
from tests.support.registry import cli, cli_json, serving_home

ROW = re.compile(r"^  (\S+(?: \S+)?)\s{2,}(\S.*)$")  # `  name  value`, the value column aligned


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A registry home with `serve` running on the embedded broker."""
    with serving_home(tmp_path_factory.mktemp("push-output")) as home:
        yield home


def summary(output: str) -> tuple[str, dict[str, str]]:
    """The headline and the `name -> value` rows; fails unless every row is aligned."""
    headline, *lines = output.rstrip("\n").split("\n")
    rows = {}
    columns = set()
    for line in lines:
        match = ROW.match(line)
        assert match, f"not a `name  value` row: {line!r}\n{output}"
        rows[match.group(1)] = match.group(2)
        columns.add(match.start(2))
    assert len(columns) == 1, f"values are not aligned:\n{output}"
    return headline, rows


def stored(home: Path, name: str, version: int) -> dict[str, Any]:
    """The release as `versions NAME --json` lists it."""
    listed = cli_json("versions", name, "--home", str(home))["versions"]
    return next(v for v in listed if v["version"] == version)


def kib(size: int) -> str:
    return f"{size / 1024:.1f} KiB"


def test_a_quantized_push_prints_sizes_in_kib_metrics_and_the_gate_verdict(
    home: Path, onnx_models: ModelSet, tmp_path: Path
) -> None:
    model = onnx_models.classifier
    data = holdout(model, tmp_path / "holdout.npz")
    args = ["push", str(model.onnx_path), "--name", "clf", "--quantize", "int8"]
    result = cli(*args, "--eval", str(data), "--label", "june retrain", "--home", str(home))
    assert result.stderr == ""
    headline, rows = summary(result.stdout)
    release = stored(home, "clf", 1)
    build = release["build"]

    assert headline == "Pushed clf version 1, signed with the release key"
    assert rows["label"] == "june retrain"
    assert rows["sha256"] == release["sha256"]
    assert rows["size"] == (
        f"{kib(release['size'])} int8, from {kib(build['fp32_size'])} float32 "
        f"(ratio {build['size_ratio']})"
    )
    assert rows["quantization"] == build["quantization_reason"]
    assert rows["accuracy"] == (
        f"fp32 {build['accuracy_fp32']}, int8 {build['accuracy_int8']} "
        f"on {build['eval_rows']} holdout rows"
    )
    assert rows["agreement"] == f"{build['agreement']} of rows get the same label from both"
    assert rows["accuracy gate"] == "passed (limit 1.0 point)"
    assert rows["self-test"] == f"{build['selftest_rows']} rows, evaluation set"


def test_a_push_without_evaluation_says_the_gate_was_not_applied(
    home: Path, onnx_models: ModelSet
) -> None:
    model = onnx_models.classifier
    result = cli("push", str(model.onnx_path), "--name", "clf-noeval", "--quantize", "int8",
                 "--accuracy-limit", "2.5", "--home", str(home))  # fmt: skip
    headline, rows = summary(result.stdout)
    release = stored(home, "clf-noeval", 1)

    assert headline == "Pushed clf-noeval version 1, signed with the release key"
    assert "label" not in rows  # no --label, no row
    assert rows["size"].startswith(f"{kib(release['size'])} int8, from ")
    assert not {"accuracy", "R2", "MAE", "agreement"} & set(rows)
    assert rows["accuracy gate"] == "not applied: no evaluation set was given (limit 2.5 point)"
    assert rows["self-test"] == f"{release['build']['selftest_rows']} rows, synthetic (seeded)"


def test_a_regressor_push_reports_r2_and_mae_and_one_size_when_nothing_was_quantized(
    home: Path, onnx_models: ModelSet, tmp_path: Path
) -> None:
    model = onnx_models.regressor  # trees: nothing to quantize, the original is kept
    data = holdout(model, tmp_path / "holdout.npz")
    result = cli("push", str(model.onnx_path), "--name", "reg", "--quantize", "int8",
                 "--eval", str(data), "--home", str(home))  # fmt: skip
    _headline, rows = summary(result.stdout)
    release = stored(home, "reg", 1)
    build = release["build"]
    assert rows["size"] == kib(release["size"])  # one size: the artifact is the original
    assert rows["quantization"] == build["quantization_reason"]
    for metric in ("r2", "mae"):
        before, after = build[f"{metric}_fp32"], build.get(f"{metric}_int8")
        measured = f"fp32 {before}, int8 {after}" if after is not None else before
        assert rows[metric.upper()] == f"{measured} on {build['eval_rows']} holdout rows"
    assert rows["accuracy gate"] == f"{build['accuracy_gate']} (limit 1.0 point)"


def test_push_json_is_the_release_the_registry_stored(
    home: Path, onnx_models: ModelSet, tmp_path: Path
) -> None:
    model = onnx_models.classifier
    data = holdout(model, tmp_path / "holdout.npz")
    result = cli("push", str(model.onnx_path), "--name", "clf-json", "--quantize", "int8",
                 "--eval", str(data), "--home", str(home), "--json")  # fmt: skip
    release = json.loads(result.stdout)  # nothing but the JSON document on stdout
    assert release == {**stored(home, "clf-json", 1), **release}
    assert {"model", "version", "sha256", "size", "build"} <= set(release)
    assert release["build"]["accuracy_gate"] == "passed"
