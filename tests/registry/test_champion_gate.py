"""The champion gate, end to end: `model-registry push --eval` against a real `serve`.

A new version is scored on the push's evaluation set next to the champion (the latest version,
or `--baseline`), both in onnxruntime with the same evaluation code; a version that is worse by
more than `--max-regression` points, or below `--min-accuracy`, is refused and nothing is stored.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from skl2onnx import to_onnx
from sklearn.ensemble import GradientBoostingRegressor
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier

from tests.support.models import TARGET_OPSET, BuiltModel, ModelSet, build_classifier, holdout
from tests.support.registry import cli, cli_json, serving_home

SCORES = re.compile(
    r"version (\d+) scores ([\d.]+)% on this evaluation set, the champion version (\d+) "
    r"scores ([\d.]+)%: more than ([\d.]+) points worse; pass --force to push it anyway"
)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A registry home with `serve` running on the embedded broker."""
    with serving_home(tmp_path_factory.mktemp("champion")) as home:
        yield home


def shuffled_classifier(model: BuiltModel, path: Path) -> Path:
    """The same network trained on shuffled labels: same io, guesses on the holdout."""
    rng = np.random.default_rng(3)
    rows = model.X_eval
    labels = rng.permutation(model.y_eval)
    estimator = MLPClassifier(hidden_layer_sizes=(64, 64), max_iter=200, random_state=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator.fit(rng.normal(size=rows.shape).astype(np.float32), labels)
    options = {id(estimator): {"zipmap": False}}
    onnx_model = to_onnx(estimator, rows[:1], options=options, target_opset=TARGET_OPSET)
    path.write_bytes(onnx_model.SerializeToString())
    return path


def shuffled_regressor(model: BuiltModel, path: Path) -> Path:
    """A regressor fitted to shuffled targets: same io, an R^2 around zero or below."""
    rng = np.random.default_rng(5)
    estimator = GradientBoostingRegressor(n_estimators=20, max_depth=3, random_state=7)
    estimator.fit(model.X_eval, rng.permutation(model.y_eval))
    onnx_model = to_onnx(estimator, model.X_eval[:1], target_opset=TARGET_OPSET)
    path.write_bytes(onnx_model.SerializeToString())
    return path


def push(home: Path, path: Path, name: str, *extra: str, check: bool = True) -> Any:
    return cli("push", str(path), "--name", name, *extra, "--home", str(home), check=check)


def versions(home: Path, name: str) -> list[dict[str, Any]]:
    return list(cli_json("versions", name, "--home", str(home))["versions"])


def test_a_bad_classifier_is_refused_with_both_scores_and_force_records_the_override(
    home: Path, onnx_models: ModelSet, tmp_path: Path
) -> None:
    good = onnx_models.classifier
    data = str(holdout(good, tmp_path / "holdout.npz"))
    push(home, good.onnx_path, "clf", "--eval", data)
    champion = versions(home, "clf")[0]["build"]
    assert champion["champion_gate"] == "passed: no champion yet"
    bad = shuffled_classifier(good, tmp_path / "bad.onnx")

    refused = push(home, bad, "clf", "--eval", data, check=False)
    assert refused.returncode != 0
    match = SCORES.search(refused.stderr)
    assert match, refused.stderr
    assert (match[1], match[3], match[5]) == ("2", "1", "1.0")
    new_score, champion_score = float(match[2]), float(match[4])
    assert f"{champion_score / 100:.3f}" == f"{float(champion['accuracy_fp32']):.3f}"
    assert champion_score - new_score > 1.0
    assert [v["version"] for v in versions(home, "clf")] == [1]  # nothing stored

    forced = push(home, bad, "clf", "--eval", data, "--force", "--json")
    build = json.loads(forced.stdout)["build"]
    assert build["champion_gate"].startswith("forced: version 2 scores")
    assert build["champion_gate_forced_by"] == "token:admin"
    assert build["champion_version"] == 1
    assert float(build["champion_score"]) == pytest.approx(champion_score / 100, abs=5e-4)
    assert float(build["champion_gate_score"]) == pytest.approx(new_score / 100, abs=5e-4)
    assert build["champion_gate_score"] == build["accuracy_fp32"]


def test_baseline_and_min_accuracy_choose_what_the_new_version_must_reach(
    home: Path, onnx_models: ModelSet, tmp_path: Path
) -> None:
    good = onnx_models.classifier
    data = str(holdout(good, tmp_path / "holdout.npz"))
    bad = shuffled_classifier(good, tmp_path / "bad.onnx")
    push(home, good.onnx_path, "clf-base", "--eval", data)
    push(home, bad, "clf-base", "--eval", data, "--force")
    # Against the latest (the bad v2) the good model is better; against v1 it is equal.
    passed = json.loads(
        push(home, good.onnx_path, "clf-base", "--eval", data, "--json", "--allow-duplicate").stdout
    )
    assert (passed["build"]["champion_gate"], passed["build"]["champion_version"]) == ("passed", 2)
    again = ("--eval", data, "--allow-duplicate")
    refused = push(home, bad, "clf-base", *again, "--baseline", "1", check=False)
    assert "the champion version 1 scores" in refused.stderr, refused.stderr
    floor = push(home, good.onnx_path, "clf-base", *again, "--min-accuracy", "99.9", check=False)
    assert "below the minimum of 99.9%" in floor.stderr, floor.stderr
    missing = push(home, good.onnx_path, "clf-base", *again, "--baseline", "9", check=False)
    assert "baseline version 9 of 'clf-base' does not exist" in missing.stderr, missing.stderr
    assert [v["version"] for v in versions(home, "clf-base")] == [1, 2, 3]


def test_a_bad_regressor_is_refused_on_r2_points(
    home: Path, onnx_models: ModelSet, tmp_path: Path
) -> None:
    good = onnx_models.regressor
    data = str(holdout(good, tmp_path / "holdout.npz"))
    push(home, good.onnx_path, "reg", "--eval", data)
    bad = shuffled_regressor(good, tmp_path / "bad.onnx")
    refused = push(home, bad, "reg", "--eval", data, check=False)
    assert refused.returncode != 0
    assert "version 2 scores R^2 " in refused.stderr, refused.stderr
    assert "the champion version 1 scores R^2 " in refused.stderr
    assert "more than 1.0 points worse" in refused.stderr
    forced = json.loads(push(home, bad, "reg", "--eval", data, "--force", "--json").stdout)
    build = forced["build"]
    assert build["champion_gate"].startswith("forced: ")
    assert build["champion_gate_score"] == build["r2_fp32"]
    champion = versions(home, "reg")[0]["build"]
    assert build["champion_score"] == champion["r2_fp32"]
    assert float(build["champion_score"]) - float(build["champion_gate_score"]) > 0.01


def test_a_champion_with_another_io_schema_skips_the_gate_and_says_so(
    home: Path, onnx_models: ModelSet, tmp_path: Path
) -> None:
    push(home, onnx_models.classifier.onnx_path, "clf-io")
    narrow = build_classifier(tmp_path / "narrow.onnx", n_features=16)
    data = str(holdout(narrow, tmp_path / "narrow.npz"))
    build = json.loads(push(home, narrow.onnx_path, "clf-io", "--eval", data, "--json").stdout)
    verdict = build["build"]["champion_gate"]
    assert verdict.startswith("skipped: the champion version 1 cannot be compared: its inputs")
    assert build["build"]["champion_version"] == 1


def test_versions_lists_scores_and_the_champion_gate_verdict(
    home: Path, onnx_models: ModelSet, tmp_path: Path
) -> None:
    good = onnx_models.classifier
    data = str(holdout(good, tmp_path / "holdout.npz"))
    push(home, good.onnx_path, "clf-list", "--eval", data, "--quantize", "int8", "--label", "a")
    push(home, shuffled_classifier(good, tmp_path / "bad.onnx"), "clf-list", "--eval", data,
         "--force", "--label", "b")  # fmt: skip
    push(home, good.onnx_path, "clf-list", "--label", "c", "--allow-duplicate")
    listed = versions(home, "clf-list")
    table = cli("versions", "clf-list", "--home", str(home)).stdout.splitlines()
    header = table[0]
    starts = {name: header.index(name) for name in ("FP32", "INT8", "CHAMPION GATE", "SHA256")}
    ends = {"FP32": starts["INT8"], "INT8": header.index("FP32 SIZE"),
            "CHAMPION GATE": starts["SHA256"]}  # fmt: skip

    def cell(line: str, name: str) -> str:
        return line[starts[name] : ends[name]].strip()

    first, second, third = (
        {
            "fp32": cell(line, "FP32"),
            "int8": cell(line, "INT8"),
            "gate": cell(line, "CHAMPION GATE"),
        }
        for line in table[1:]
    )
    assert first["fp32"] == listed[0]["build"]["accuracy_fp32"]
    assert first["int8"] == listed[0]["build"]["accuracy_int8"]
    assert first["gate"] == "passed"
    assert second["gate"] == "forced"
    assert third["gate"] == "not applied"


def test_openapi_documents_every_push_field_the_api_reads() -> None:
    from model_registry.api.uploads import FILE_FIELDS, TEXT_FIELDS

    document = json.loads(
        (Path(__file__).resolve().parents[2] / "model_registry/api/openapi.json").read_text()
    )
    content = document["paths"]["/v1/models/{name}/versions"]["post"]["requestBody"]["content"]
    form = content["multipart/form-data"]["schema"]["properties"]
    assert set(form) == {*FILE_FIELDS, *TEXT_FIELDS}
    raw = content["application/octet-stream"]["description"]
    assert set(re.findall(r"[a-z_]+", raw.split("query parameters", 1)[1])) == set(TEXT_FIELDS)
