"""Which devices each wave moves, and the policy that says how many waves there are."""

from __future__ import annotations

import random

import pytest

from model_registry.errors import InvalidInputError
from model_registry.rollouts.policy import RolloutPolicy, merged, parse_duration, parse_policy
from model_registry.rollouts.waves import ordered, plan, wave_devices

GROUP = [f"pi-{i:03d}" for i in range(200)]
STEPS = (5.0, 25.0, 100.0)


def _all_waves(group: list[str], steps: tuple[float, ...], canary: tuple[str, ...] = ()) -> list:
    moved: set[str] = set()
    waves = []
    for index in range(len(plan(steps, canary))):
        devices, percent = wave_devices(group, steps, canary, index, moved)
        moved |= set(devices)
        waves.append((devices, percent))
    return waves


def test_waves_reach_their_share_and_every_device_once() -> None:
    waves = _all_waves(GROUP, STEPS)
    assert [len(d) for d, _ in waves] == [10, 40, 150]
    assert [p for _, p in waves] == [5.0, 25.0, 100.0]
    every = [d for devices, _ in waves for d in devices]
    assert sorted(every) == sorted(GROUP)


def test_the_order_depends_on_the_ids_alone() -> None:
    shuffled = GROUP[:]
    random.Random(7).shuffle(shuffled)
    assert _all_waves(shuffled, STEPS) == _all_waves(GROUP, STEPS)  # reruns pick the same
    assert ordered(shuffled) == ordered(GROUP)


def test_a_device_in_the_5_percent_wave_is_in_the_25_percent_one() -> None:
    first, _ = wave_devices(GROUP, (5.0, 100.0), (), 0, set())
    reach_25, _ = wave_devices(GROUP, (25.0, 100.0), (), 0, set())
    assert set(first) <= set(reach_25)
    # A device joining the group keeps the others where they were.
    grown = [*GROUP, "pi-new"]
    assert set(wave_devices(grown, (25.0, 100.0), (), 0, set())[0]) - {"pi-new"} <= set(reach_25)


def test_named_canaries_form_the_first_wave() -> None:
    canary = ("pi-150", "pi-007")
    waves = _all_waves(GROUP, STEPS, canary)
    assert waves[0] == (canary, 1.0)
    assert len(waves) == 3
    assert not set(canary) & set(waves[1][0])
    assert len(waves[1][0]) == 48  # 25% of 200, the canaries counted in
    # With one step, the canaries go first as a wave of their own.
    assert [len(d) for d, _ in _all_waves(GROUP, (100.0,), canary)] == [2, 198]


def test_small_groups_move_at_least_one_device_per_wave() -> None:
    waves = _all_waves(["a", "b", "c"], (1.0, 2.0, 100.0))
    assert [len(d) for d, _ in waves] == [1, 1, 1]
    assert _all_waves(["a"], STEPS)[1:] == [((), 25.0), ((), 100.0)]


def test_policy_from_toml_like_values_and_flags() -> None:
    policy = parse_policy({"steps": [10, 50, 100], "soak": "2m", "max_psi": 0.3, "manual": True})
    assert (policy.steps, policy.soak, policy.max_psi, policy.manual) == (
        (10.0, 50.0, 100.0), 120.0, 0.3, True
    )  # fmt: skip
    flagged = merged(policy, steps="5,100", soak="1.5s", canary=["pi-1"])
    assert (flagged.steps, flagged.soak, flagged.canary, flagged.max_psi) == (
        (5.0, 100.0), 1.5, ("pi-1",), 0.3
    )  # fmt: skip
    assert parse_policy(policy.to_dict()) == policy
    assert [parse_duration(v, "d") for v in (30, "90s", "10m", "2h", "1d")] == [
        30.0, 90.0, 600.0, 7200.0, 86400.0
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"steps": [25, 5, 100]}, "must grow"),
        ({"steps": [5, 50]}, "must end at 100"),
        ({"steps": []}, "at least one wave"),
        ({"steps": [0, 100]}, "above 0"),
        ({"steps": "5,x,100"}, "percents such as"),
        ({"soak": "ten minutes"}, "duration such as"),
        ({"soak": -1}, "zero seconds or more"),
        ({"soak": True}, "duration such as"),
        ({"deadline": 0}, "between 1 s"),
        ({"max_failure_percent": 101}, "between 0 and 100"),
        ({"max_latency_ratio": 0.5}, "between 1 and 1000"),
        ({"min_requests": 1.5}, "whole number"),
        ({"manual": "yes"}, "true or false"),
        ({"canary": ["a", "a"]}, "distinct devices"),
        ({"canary": "pi-1"}, "list of device ids"),
        ({"max_pis": 0.1}, "did you mean 'max_psi'"),
        ({"max_psi": float("nan")}, "must be a number"),
    ],
)
def test_a_bad_policy_names_the_setting(values: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_policy(values)


def test_defaults() -> None:
    policy = RolloutPolicy()
    assert policy.steps == STEPS
    assert policy.soak == 600
    assert policy.rollback
    assert policy.describe() == "waves 5%, 25%, 100%; soak 600 s"
