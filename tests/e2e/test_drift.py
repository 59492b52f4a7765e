"""Drift end to end: three real agents, one of which sees inputs shifted by two standard
deviations on three features.

The registry makes the release's profile from the evaluation set at push; the agents count
what they serve in its bins and report every second; the registry's drift duty (every second
here) must raise an alert naming exactly those three features on exactly that device, leave
the other devices ok, and its PSI must equal the one this test computes with numpy from the
rows it sent.
"""

from __future__ import annotations

import json
import math
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edge_protocol import Envelope, Profile, Release
from tests.e2e.conftest import start_agent
from tests.support.agent import AgentProcess
from tests.support.broker import BrokerFactory
from tests.support.fleet import Fleet
from tests.support.models import BuiltModel, build_classifier
from tests.support.registry import cli

MODEL = "drifty"
SHIFTED_DEVICE = "drift-1"
DEVICES = ("drift-0", SHIFTED_DEVICE, "drift-2")
SHIFTED_COLUMNS = (1, 4, 6)
ROWS_PER_REQUEST = 10
FLOOR = 1e-4  # the share an empty bin counts as (docs/registry.md, "Drift")
AGENT_SETTINGS = "[telemetry]\ninterval_s = 1.0\n[updates]\nprobation_s = 1\n"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> BuiltModel:
    """8 features, so three shifted ones are a fair part; 300 evaluation rows."""
    return build_classifier(
        tmp_path_factory.mktemp("drift-model") / "drifty.onnx", n_features=8, n_samples=1200
    )


@pytest.fixture(scope="module")
def drift_fleet(
    tmp_path_factory: pytest.TempPathFactory, classifier: BuiltModel
) -> Iterator[Fleet]:
    """A registry judging drift every second, once a window holds all the rows of a device."""
    root = tmp_path_factory.mktemp("drift-fleet")
    factory = BrokerFactory(root / "brokers")
    fleet = Fleet(root, factory)
    rows = len(classifier.X_eval)
    fleet.start(extra_config=f"[drift]\ninterval_s = 1\nmin_samples = {rows}\n")
    yield fleet
    fleet.stop()
    factory.close()


def test_one_shifted_device_raises_an_alert_on_exactly_its_shifted_features(
    drift_fleet: Fleet, classifier: BuiltModel, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    fleet = drift_fleet
    holdout = tmp_path / "holdout.npz"
    np.savez(holdout, X=classifier.X_eval, y=classifier.y_eval)
    version = fleet.push(classifier.onnx_path, MODEL, "--eval", str(holdout))["version"]
    profile = _profile(fleet, version)
    _check_profile_counts(profile, classifier.X_eval)

    devices = {d: start_agent(fleet, agents, d, "drift", AGENT_SETTINGS) for d in DEVICES}
    done = cli("deploy", MODEL, str(version), "--group", "drift", "--wait", *fleet.api())
    assert "3/3 activated" in done.stdout

    sent = _send(devices, classifier.X_eval)
    answer = _until_judged(fleet, len(classifier.X_eval))

    alerts = [r for r in answer["records"] if r["kind"] == "drift_alert" and r["device_id"]]
    assert {(r["device_id"], r["feature"]) for r in alerts if r["feature"] != "predictions"} == {
        (SHIFTED_DEVICE, f"X[{c}]") for c in SHIFTED_COLUMNS
    }
    assert {r["status"] for r in alerts if r["feature"] != "predictions"} == {"alert"}
    rows = [r for r in answer["features"] if r["device_id"] is not None]
    for row in rows:
        if row["device_id"] != SHIFTED_DEVICE:
            assert row["status"] == "ok", row
        elif row["feature"] in {f"X[{c}]" for c in SHIFTED_COLUMNS}:
            assert row["status"] == "alert", row
        elif row["feature"] != "predictions":  # the shift may move the predictions as well
            assert row["status"] == "ok", row
    assert not [r for r in answer["records"] if r["device_id"] not in (None, SHIFTED_DEVICE)]

    # The PSI of every device's every column, from the rows this test sent, with numpy.
    for row in rows:
        if row["feature"] == "predictions":
            continue
        column = int(row["feature"][2:-1])
        bins = profile.inputs[classifier.input_name].columns[column]
        expected_psi = _numpy_psi(bins.edges, bins.counts, sent[row["device_id"]][:, column])
        assert row["psi"] == pytest.approx(expected_psi, rel=1e-5, abs=1e-9), row
        assert row["samples"] == len(classifier.X_eval)

    _check_cli_and_metrics(fleet, answer)


def _send(devices: dict[str, AgentProcess], reference: Any) -> dict[str, Any]:
    """Each device gets every reference row once, in its own order; one device shifted."""
    rng = np.random.default_rng(18)
    std = reference.astype(np.float64).std(axis=0)
    sent = {}
    for device_id, agent in devices.items():
        rows = reference[rng.permutation(len(reference))].copy()
        if device_id == SHIFTED_DEVICE:
            for column in SHIFTED_COLUMNS:
                rows[:, column] += np.float32(2 * std[column])
        for start in range(0, len(rows), ROWS_PER_REQUEST):
            status, body = agent.infer(MODEL, rows[start : start + ROWS_PER_REQUEST].tolist())
            assert status == 200, body
        sent[device_id] = rows.astype(np.float64)
    return sent


def _numpy_psi(edges: tuple[float, ...], expected: tuple[int, ...], values: Any) -> float:
    observed = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(expected))
    shares = []
    for counts in (np.asarray(expected, np.float64), observed.astype(np.float64)):
        lifted = np.maximum(counts / counts.sum(), FLOOR)
        shares.append(lifted / lifted.sum())
    e, o = shares
    return float(np.sum((o - e) * np.log(o / e)))


def _check_profile_counts(profile: Profile, reference: Any) -> None:
    """The signed profile's counts are the reference rows in its own bins."""
    (entry,) = profile.inputs.values()
    assert len(entry.columns) == reference.shape[1]
    for i, bins in enumerate(entry.columns):
        index = np.searchsorted(bins.edges, reference[:, i].astype(np.float64), side="right")
        assert np.bincount(index, minlength=len(bins.counts)).tolist() == list(bins.counts)
        assert 5 <= len(bins.counts) <= 10


def _until_judged(fleet: Fleet, rows: int, timeout: float = 120) -> dict[str, Any]:
    """GET the drift table until every device's features hold all rows and were judged."""
    deadline = time.monotonic() + timeout
    while True:
        answer: dict[str, Any] = _api(fleet, f"/v1/models/{MODEL}/drift")
        per_device = [r for r in answer["features"] if r["device_id"] is not None]
        complete = len({r["device_id"] for r in per_device}) == len(DEVICES) and all(
            r["samples"] == rows for r in per_device
        )
        raised = {r["feature"] for r in answer["records"] if r["device_id"] == SHIFTED_DEVICE}
        if complete and {f"X[{c}]" for c in SHIFTED_COLUMNS} <= raised:
            return answer
        assert time.monotonic() < deadline, json.dumps(answer)[:3000]
        time.sleep(0.5)


def _check_cli_and_metrics(fleet: Fleet, answer: dict[str, Any]) -> None:
    table = cli("drift", MODEL, "--device", SHIFTED_DEVICE, "--window", "1h", *fleet.api())
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["DEVICE", "VERSION", "FEATURE"]
    worst = [line.split() for line in lines[1:4]]
    assert {w[2] for w in worst} <= {f"X[{c}]" for c in SHIFTED_COLUMNS} | {"predictions"}
    assert all(w[0] == SHIFTED_DEVICE and w[-1] == "alert" for w in worst)
    psis = [float(line.split()[3]) for line in lines[1:] if line.split()[-1] != "insufficient"]
    assert psis[:3] == sorted(psis[:3], reverse=True)
    # The gauges are those of the duty's last pass: wait for one over all the rows.
    fleet_rows = {r["feature"]: r for r in answer["features"] if r["device_id"] is None}
    series = f'model_registry_drift_psi{{model="{MODEL}",version="1",feature="X[1]"}}'
    deadline = time.monotonic() + 30
    while True:
        metrics: str = _api(fleet, "/metrics")
        found = [float(e.split()[-1]) for e in metrics.splitlines() if e.startswith(series)]
        if found and math.isclose(found[0], fleet_rows["X[1]"]["psi"], rel_tol=1e-4):
            break
        assert time.monotonic() < deadline, (found, fleet_rows["X[1]"])
        time.sleep(0.5)
    assert 'model_registry_drift_status{model="drifty",version="1",feature="X[4]"}' in metrics
    refused = cli("drift", MODEL, "--window", "1 week", *fleet.api(), check=False)
    assert refused.returncode == 1
    assert "window" in refused.stderr


def _profile(fleet: Fleet, version: int) -> Profile:
    """The profile in the signed release the registry serves."""
    release = _api(fleet, f"/v1/models/{MODEL}/versions/{version}")
    signed = Envelope.from_dict(release["signed_release"]).signed
    profile = Release.from_dict(signed).profile
    assert profile is not None
    return profile


def _api(fleet: Fleet, path: str) -> Any:
    token = (fleet.home / "secrets" / "cli-token").read_text().strip()
    request = urllib.request.Request(  # noqa: S310 - the test registry's http URL
        fleet.registry.url + path, headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
        return json.loads(response.read()) if path != "/metrics" else response.read().decode()
