"""The bookkeeping of each answer during an experiment: what is kept, for how long, counted."""

from __future__ import annotations

import numpy as np

from edge_agent.experiments.answers import KEPT_BYTES, MAX_ROWS, Answer, AnswerMemory, read_answer
from edge_agent.experiments.counters import ExperimentCounters


def _answer(label: int, model: str = "m") -> Answer:
    return Answer(model, 1, "label", (label,))


def test_the_memory_forgets_the_oldest_answers_first_and_counts_them() -> None:
    memory = AnswerMemory(3)
    for i in range(5):
        memory.remember(f"r{i}", _answer(i))
    assert len(memory) == 3
    assert memory.forgotten == 2
    assert memory.take("m", "r0") is None
    assert memory.take("m", "r1") is None
    assert [memory.take("m", f"r{i}").rows for i in (2, 3, 4)] == [(2,), (3,), (4,)]  # type: ignore[union-attr]


def test_a_reused_id_keeps_its_latest_answer_past_the_slot_of_its_first() -> None:
    memory = AnswerMemory(3)
    memory.remember("same", _answer(1))
    memory.remember("other", _answer(2))
    memory.remember("same", _answer(3))  # the first "same" slot now names an older answer
    memory.remember("next", _answer(4))  # takes the first slot back: "same" is not forgotten
    assert memory.forgotten == 0
    assert memory.take("m", "same").rows == (3,)  # type: ignore[union-attr]
    memory.remember("a", _answer(5))  # pushes "other" out
    memory.remember("b", _answer(6))  # the slot of the answer taken: nothing to forget
    assert memory.forgotten == 1
    assert memory.take("m", "other") is None
    assert len(memory) == 3


def test_an_answer_is_scored_once_and_only_for_its_model() -> None:
    memory = AnswerMemory(4)
    memory.remember("r", _answer(1, model="a"))
    assert memory.take("b", "r") is None
    assert memory.take("a", "r") is not None
    assert memory.take("a", "r") is None
    memory.remember("x", _answer(1, model="a"))
    memory.remember("y", _answer(2, model="b"))
    memory.forget_model("a")
    assert memory.take("a", "x") is None
    assert memory.take("b", "y") is not None


def test_a_memory_of_no_answers_keeps_none() -> None:
    memory = AnswerMemory(0)
    memory.remember("r", _answer(1))
    assert len(memory) == 0
    assert memory.forgotten == 1


def test_a_small_batch_output_is_shared_by_its_answers_and_a_large_one_is_cut_to_its_labels() -> (
    None
):
    batch = np.arange(32, dtype=np.int64)  # 256 bytes: one batch's labels
    parts = np.split(batch, np.arange(1, 32))
    answers = [read_answer("m", 1, "label", part) for part in parts]
    assert [a.rows for a in answers] == [(i,) for i in range(32)]
    kept = read_answer("m", 1, "label", parts[5])
    assert np.shares_memory(kept._rows, batch)  # no copy of a small output

    large = np.arange(1000 * 8, dtype=np.float32).reshape(1000, 8)  # 32 kB: more than kept
    assert large.nbytes > KEPT_BYTES
    cut = read_answer("m", 1, "value", large[100:900])
    assert not np.shares_memory(cut._rows, large)
    assert cut._rows.nbytes <= KEPT_BYTES  # type: ignore[union-attr]
    assert cut.rows == tuple(float(v) for v in large[100 : 100 + MAX_ROWS, 0])


def test_the_counts_the_request_path_holds_keep_counting_across_reports() -> None:
    counters = ExperimentCounters()
    held = counters.variant("m", 1)
    held.answered += 2
    assert counters.drain()[("m", "1")]["answered"] == 2
    assert counters.drain() == {}  # nothing counted since: nothing reported
    held.answered += 1
    assert counters.drain()[("m", "1")]["answered"] == 1


def test_an_ended_variant_reports_its_last_counts_then_is_forgotten() -> None:
    counters = ExperimentCounters()
    counters.variant("m", 2).shadow_dropped += 3
    counters.end("m", 2)
    assert counters.drain()[("m", "2")]["shadow"]["dropped"] == 3
    again = counters.variant("m", 2)  # a new experiment on the same version starts at zero
    assert again.shadow_dropped == 0
    counters.end("m", 2)
    counters.variant("m", 2).answered += 1  # restarted before the report: not forgotten
    assert counters.drain()[("m", "2")]["answered"] == 1
    counters.variant("m", 2).answered += 1
    assert counters.drain()[("m", "2")]["answered"] == 1
