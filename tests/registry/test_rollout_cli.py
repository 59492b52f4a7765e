"""`model-registry rollout ...`: a bad policy is named before anything is sent, and the progress
display shows each wave with its bar, the halt and the latest decisions."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from model_registry.cli import main
from model_registry.cli.rollouts import RolloutView, status_lines

# No registry answers here: each refusal must come before the CLI reaches for one.
NOWHERE = ("--url", "http://127.0.0.1:9", "--token", "t")


@pytest.mark.parametrize(
    ("policy", "flags", "message"),
    [
        ("steps = [5, 50]\n", (), "policy.toml: policy 'steps' must end at 100"),
        ("max_pis = 0.2\n", (), "unknown setting 'max_pis'; did you mean 'max_psi'?"),
        ("soak = [\n", (), "policy.toml: not valid TOML"),
        ("", ("--soak", "ten"), "policy 'soak' must be a duration such as 30"),
        ("", ("--steps", "5,x,100"), "percents such as 5,25,100"),
        ("", ("--canary", "a", "a"), "distinct devices"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_setting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], policy: str, flags: tuple[str, ...],
    message: str,
) -> None:  # fmt: skip
    path = tmp_path / "policy.toml"
    path.write_text(policy)
    argv = ["rollout", "start", "m", "2", "--group", "lab", "--policy", str(path), *flags]
    assert main([*argv, *NOWHERE]) == 1
    error = capsys.readouterr().err
    assert message in error, error
    assert "cannot reach" not in error


def test_a_missing_policy_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["rollout", "start", "m", "2", "--group", "lab", "--policy", str(tmp_path / "no.toml")]
    assert main([*argv, *NOWHERE]) == 1
    assert "no.toml: no such file" in capsys.readouterr().err


def _wave(index: int, state: str, devices: int, activated: int, **counts: int) -> dict[str, Any]:
    return {
        "index": index, "percent": [25, 50, 100][index - 1], "state": state,
        "devices": [f"d{i}" for i in range(devices)], "activated": activated,
        "counts": {"activated": activated, **counts},
    }  # fmt: skip


STATUS = {
    "id": 3, "model": "fraud", "version": 4, "group": "lab", "state": "halted",
    "devices_moved": 4,
    "waves": [_wave(1, "passed", 2, 2), _wave(2, "moving", 2, 1, rolled_back=1)],
    "halt": {"reason": "gate install: 50 above the limit 10 (1 of 2 ...) on d1"},
    "decisions": [
        {"at": f"2026-06-01T12:00:0{i}Z", "actor": "controller", "action": a, "reason": a}
        for i, a in enumerate(["started", "wave_started", "halted", "rolled_back"])
    ],
}  # fmt: skip


def test_each_wave_has_its_progress_bar_and_the_halt_its_reason() -> None:
    lines = status_lines(STATUS, decisions=2)
    assert lines[0] == "Rollout 3: fraud version 4 to group lab, halted (4 device(s) moved)"
    assert lines[1].split() == [
        "wave", "1/2", "25%", "2", "device(s)", "[####################]", "2/2", "activated,",
        "passed",
    ]  # fmt: skip
    assert "[##########----------] 1/2 activated, moving: 1 rolled back" in lines[2]
    assert lines[3] == "  halted: gate install: 50 above the limit 10 (1 of 2 ...) on d1"
    assert [line.split()[2] for line in lines[4:]] == ["halted:", "rolled_back:"]


def test_the_gates_of_the_current_wave_are_shown_as_they_stand() -> None:
    gates = [
        {"gate": "install", "held": True, "measured": 0.0, "limit": 10.0, "detail": "",
         "waits": False},
        {"gate": "latency", "held": None, "measured": None, "limit": 2.0, "waits": True,
         "detail": "4 new, 30 replaced answers, fewer than 20"},
        {"gate": "prediction_shift", "held": False, "measured": 1.734, "limit": 0.25, "detail": "",
         "waits": False},
    ]  # fmt: skip
    lines = status_lines({**STATUS, "state": "running", "halt": None, "gates": gates})
    assert lines[3] == (
        "  gates now: install 0 (limit 10) held; latency waits (4 new, 30 replaced answers,"
        " fewer than 20); prediction_shift 1.73 (limit 0.25) BROKEN"
    )


def test_the_followed_view_prints_only_what_changed_into_a_file() -> None:
    out = io.StringIO()
    view = RolloutView(out)
    view.update(STATUS)
    first = out.getvalue()
    view.update(STATUS)
    assert out.getvalue() == first  # nothing changed: nothing printed
    moved = {**STATUS, "waves": [_wave(1, "passed", 2, 2), _wave(2, "passed", 2, 2)]}
    view.update(moved)
    added = out.getvalue()[len(first) :]
    assert added.splitlines() == [status_lines(moved, decisions=3)[2]]
