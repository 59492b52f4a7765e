"""`benchmarks/run.py --only` keeps the record of the full run it reruns sections of."""

from __future__ import annotations

from benchmarks.run import with_rerun


def test_a_rerun_replaces_only_its_sections_and_says_when_it_ran() -> None:
    earlier = {
        "started": "2026-11-30 10:00 UTC",
        "commit": "a" * 40,
        "wall_s": 800.0,
        "machine": {"load_average_at_start": [0.1, 0.1, 0.1]},
        "section_wall_s": {"serving": 500.0, "footprint": 60.0},
        "failures": {"footprint": "RuntimeError: x"},
    }
    rerun = {
        "started": "2026-12-01 09:00 UTC",
        "commit": "b" * 40,
        "wall_s": 70.0,
        "machine": {"load_average_at_start": [1.5, 1.0, 0.5]},
        "section_wall_s": {"footprint": 65.0},
        "failures": {},
    }
    merged = with_rerun(earlier, rerun)
    assert merged["started"] == earlier["started"]
    assert merged["commit"] == earlier["commit"]
    assert merged["section_wall_s"] == {"serving": 500.0, "footprint": 65.0}
    assert merged["failures"] == {}
    assert merged["reruns"] == [
        {"started": "2026-12-01 09:00 UTC", "commit": "b" * 40, "wall_s": 70.0,
         "sections": ["footprint"], "load_average_at_start": [1.5, 1.0, 0.5]}
    ]  # fmt: skip
    again = with_rerun(merged, rerun | {"failures": {"footprint": "boom"}})
    assert again["failures"] == {"footprint": "boom"}
    assert len(again["reruns"]) == 2
