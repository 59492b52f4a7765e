"""Probation as the updater runs it, table by table, on the simulator.

A real agent (tests/support/update_sim.py) swaps a new version in and watches the answers its
local endpoint gives (real onnxruntime models, each misbehaving in one way:
tests/support/probation_models.py). Each case checks the outcome docs/agent.md gives the rule:
committed, rolled back with the reason, or, with nothing to roll back to, kept serving and
reported `failed`. Then the restarts during probation and what `max_probation_restarts` does
with them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import pytest

from edge_agent.config.settings import UpdateSettings
from tests.support.update_sim import Sim, run_sim

M = "m"
SETTINGS = UpdateSettings(
    release_timeout_s=60, download_timeout_s=120, activation_timeout_s=300,
    probation_requests=5, probation_s=600, probation_min_requests=5,
    # The slow model takes about 300 ms a request, far above 3 x 50 ms of scheduling noise.
    probation_latency_floor_ms=50, probation_max_latency_ratio=3,
    max_probation_restarts=1, write_retry_min_s=1, write_retry_max_s=4,
)  # fmt: skip
Outcome = Literal["committed", "rolled_back", "kept"]


@dataclass(frozen=True)
class Probation:
    before: str | None  # the kind of the version serving before, None for a first-ever one
    after: str  # the kind of the new version
    outcome: Outcome
    reason: str | None = None
    requests: int = SETTINGS.probation_requests  # answered during probation
    time_runs_out: bool = False  # probation_s passes after the requests
    damage_previous: bool = False  # the previous version's file stops verifying meanwhile


CASES = {
    "enough-good-answers-commit-it": Probation("good", "good", "committed"),
    "the-time-limit-commits-a-quiet-one": Probation(
        "good", "good", "committed", requests=0, time_runs_out=True
    ),
    "server-errors-roll-it-back": Probation("good", "erratic", "rolled_back", "probation_failed"),
    "server-errors-roll-it-back-when-the-time-runs-out": Probation(
        "good", "erratic", "rolled_back", "probation_failed", requests=2, time_runs_out=True
    ),
    "non-finite-answers-roll-it-back": Probation(
        "good", "nonfinite", "rolled_back", "probation_nonfinite"
    ),
    "one-class-for-every-row-rolls-it-back": Probation(
        "good", "collapse", "rolled_back", "probation_collapse"
    ),
    "a-much-slower-model-is-rolled-back": Probation(
        "good", "slow", "rolled_back", "probation_latency"
    ),
    "a-failing-first-version-keeps-serving": Probation(
        None, "nonfinite", "kept", "probation_nonfinite"
    ),
    "a-first-version-is-not-compared-with-anything": Probation(None, "collapse", "committed"),
    "a-previous-version-that-no-longer-verifies-is-not-returned-to": Probation(
        "good", "nonfinite", "kept", "probation_nonfinite", damage_previous=True
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_probation_outcome(tmp_path: Path, sim_models: dict[str, Path], case: str) -> None:
    rule = CASES[case]

    async def scenario(sim: Sim) -> None:
        before = None
        if rule.before is not None:
            before = sim.repo.release(M, 1, sim_models[rule.before])
            await sim.install(before)
        new = sim.repo.release(M, 2 if before else 1, sim_models[rule.after])
        sim.repo.assign(new)
        version, seq = new.version, sim.repo.seq
        await sim.until(lambda: sim.in_probation(M, version), "the new version on probation")
        if rule.damage_previous and before is not None:
            stored = sim.state_dir / "models" / f"{before.release.artifact.sha256}.onnx"
            stored.write_bytes(stored.read_bytes()[:-1] + b"?")
        statuses = await sim.infer(M, rule.requests)
        assert all(status == 200 for status in statuses) == (rule.after != "erratic")
        if rule.time_runs_out:
            await sim.advance(SETTINGS.probation_s)
        if rule.outcome == "committed":
            await sim.until(lambda: sim.committed(M, version), "committed")
            previous = sim.on_disk(M)["previous"]
            assert (previous or {}).get("version") == (1 if before else None)
            assert sim.failed_here(M) == {}
        elif rule.outcome == "rolled_back":
            rolled_back = await sim.event("rolled_back", version)
            assert (rolled_back["reason"], rolled_back["to_version"]) == (rule.reason, 1)
            await sim.until(lambda: sim.committed(M, 1), "v1 serving again, committed")
            assert sim.failed_here(M) == {version: seq}
        else:  # nothing to return to: the device never ends up serving nothing
            failed = await sim.event("failed", version)
            assert failed["reason"] == rule.reason
            assert "no earlier version" in failed["detail"]
            await sim.until(lambda: sim.failed_here(M) == {version: seq}, "recorded as failed")
            assert sim.serving(M) == version
            assert sim.phase(M) == "failed"
            on_disk = sim.on_disk(M)
            assert (on_disk["active"]["version"], on_disk["in_probation"]) == (version, False)

    run_sim(tmp_path, SETTINGS, scenario)


# --- restarts during probation --------------------------------------------------------------------


@dataclass(frozen=True)
class Restarts:
    ends: tuple[str, ...]  # how each run of the agent ended: "stop" (SIGTERM) or "kill"
    counted: int | None  # the restarts state.json counts after them; None: rolled back


RESTARTS = {  # with max_probation_restarts = 1
    "one-kill-resumes-the-probation": Restarts(("kill",), 1),
    "kills-past-the-limit-roll-it-back": Restarts(("kill", "kill"), None),
    "clean-stops-never-count": Restarts(("stop", "stop", "stop"), 0),
    "a-kill-after-clean-stops-counts-once": Restarts(("stop", "stop", "kill"), 1),
    "kills-past-the-limit-count-across-clean-stops": Restarts(("kill", "stop", "kill"), None),
}


@pytest.mark.parametrize("case", sorted(RESTARTS))
def test_restarts_during_probation(tmp_path: Path, sim_models: dict[str, Path], case: str) -> None:
    restarts = RESTARTS[case]

    async def scenario(sim: Sim) -> None:
        await sim.install(sim.repo.release(M, 1, sim_models["good"]))
        v2 = sim.repo.release(M, 2, sim_models["good"])
        sim.repo.assign(v2)
        await sim.until(lambda: sim.in_probation(M, 2), "v2 on probation")
        for end in restarts.ends:
            await sim.restart(clean=end == "stop")
            if sim.on_disk(M)["active"]["version"] != 2:
                break
            assert sim.in_probation(M, 2), "it serves at once and its probation starts again"
        if restarts.counted is None:
            rolled_back = await sim.event("rolled_back", 2)
            assert (rolled_back["reason"], rolled_back["to_version"]) == ("probation_failed", 1)
            assert "restarted" in rolled_back["detail"]
            await sim.until(lambda: sim.committed(M, 1), "v1 serving again, committed")
            assert sim.failed_here(M) == {2: 2}
            return
        assert sim.on_disk(M)["probation_restarts"] == restarts.counted
        await sim.infer(M, SETTINGS.probation_requests)
        await sim.until(lambda: sim.committed(M, 2), "v2 committed after all")
        assert sim.on_disk(M)["probation_restarts"] == 0

    run_sim(tmp_path, replace(SETTINGS, max_probation_restarts=1), scenario)
