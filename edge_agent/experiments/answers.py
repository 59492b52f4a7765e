"""What a model answered, in the terms feedback speaks: a label or a value per row.

A model with an integer or string output is a classifier and its first such output is the
label (a scikit-learn classifier's `label`); otherwise the first floating output's first
column is the value (a regressor's `variable`). `AnswerMemory` keeps the answers of recent
request ids, bounded, so that feedback arriving later finds which variant answered and what.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from edge_agent.runtime.model import Array
from edge_protocol import ModelIO

LABEL_TYPES = frozenset(
    {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BYTES"}
)
FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
MAX_ROWS = 64  # rows of one request whose answers are kept; feedback beyond them is refused
KEPT_BYTES = 512  # the most an answer holds of its output: MAX_ROWS 64-bit labels

Prediction = int | str | float


class Answer:
    """One request's answer: which version gave it and its label or value per row.

    Holds the model's output as it came and reads the label or value from it only when asked:
    most answers are never scored, and the request should not pay for it. `slot` is its
    place in the AnswerMemory that keeps it.
    """

    __slots__ = ("_rows", "kind", "model", "slot", "version")

    def __init__(
        self, model: str, version: int, kind: str, rows: tuple[Prediction, ...] | Array
    ) -> None:
        self.model = model
        self.version = version
        self.kind = kind  # "label" or "value"
        self.slot = -1
        self._rows = rows  # the model's output until the rows are first asked for

    @property
    def rows(self) -> tuple[Prediction, ...]:
        """The label or value of each row (the first MAX_ROWS)."""
        if not isinstance(self._rows, tuple):
            self._rows = tuple(_predictions(self.kind, _first_column(self._rows, MAX_ROWS)))
        return self._rows


def output_kind(io: ModelIO) -> tuple[str, str] | None:
    """(kind, output name) that feedback is compared with, or None when there is none."""
    for spec in io.outputs:
        if spec.datatype in LABEL_TYPES:
            return "label", spec.name
    for spec in io.outputs:
        if spec.datatype in FLOAT_TYPES:
            return "value", spec.name
    return None


def read_answer(model: str, version: int, kind: str, output: Array) -> Answer:
    """The answer in `output`, the output `output_kind` names.

    A request's output is most often a slice of its batch's (onnxruntime's array of that
    output, which holds just that tensor): a batch output this small is kept as it is, shared
    by the answers of its batch. A larger one would hold memory for rows no feedback can name,
    and memory that is not an array's cannot be sized, so then the first column's first
    MAX_ROWS rows are copied out. Either way an answer holds at most KEPT_BYTES of output.
    """
    base = output.base
    if base is None:
        size = output.nbytes
    else:  # a view: what it keeps alive is the array it views
        size = base.nbytes if isinstance(base, np.ndarray) else KEPT_BYTES + 1
    if size > KEPT_BYTES:
        output = _first_column(output, MAX_ROWS).copy()
    return Answer(model, version, kind, output)


def predictions(outputs: Mapping[str, Array], io: ModelIO) -> tuple[str, list[Prediction]] | None:
    """(kind, the label or value of each row), or None when the outputs have neither."""
    found = _column(outputs, io)
    if found is None:
        return None
    kind, column = found
    return kind, _predictions(kind, column)


def _column(outputs: Mapping[str, Array], io: ModelIO) -> tuple[str, Array] | None:
    """(kind, the first column of the output feedback speaks of)."""
    found = output_kind(io)
    if found is None or found[1] not in outputs:
        return None
    kind, name = found
    return kind, _first_column(outputs[name])


def _first_column(array: Array, limit: int | None = None) -> Array:
    """The first value of each row of `array` (of its first `limit` rows)."""
    if array.size == 0:  # no rows: nothing to compare (reshape below needs one element)
        return array.reshape(0)
    return array.reshape(array.shape[0], -1)[:limit, 0] if array.ndim else array.reshape(1)


def _predictions(kind: str, column: Any) -> list[Prediction]:
    if kind == "label":
        return [_label(v) for v in column.tolist()]
    return [float(v) for v in column.tolist()]


def _label(value: Any) -> int | str:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value if isinstance(value, int | str) else str(value)


def same_label(a: Prediction, b: Prediction) -> bool:
    """Labels compare by their text: a model's INT64 1 and an application's "1" agree."""
    return str(a) == str(b)


def abs_difference(a: Prediction, b: Prediction) -> float | None:
    """|a - b| of two finite values, or None when either is not one."""
    if isinstance(a, str) or isinstance(b, str):
        return None
    difference = abs(float(a) - float(b))
    return difference if math.isfinite(difference) else None


class AnswerMemory:
    """The answers of the most recent `capacity` request ids; the oldest is forgotten first.

    A ring of `capacity` slots in the order the answers came, and a dict from request id to
    answer: remembering one costs a slot and a dict entry, with no lock. Everything that
    touches it runs on the event loop's thread (answers, feedback, an experiment's end).
    A slot keeps the id of the answer it last took; an answer taken by feedback, or replaced
    by a later answer under the same id, leaves its slot naming an id that is no longer (or
    elsewhere) in the dict, and the ring passes over it.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._answers: dict[str, Answer] = {}
        self._ring: list[str | None] = [None] * capacity
        self._next = 0  # the slot the next answer takes
        self.forgotten = 0  # answers pushed out before their feedback came

    def __len__(self) -> int:
        return len(self._answers)

    def remember(self, request_id: str, answer: Answer) -> None:
        """Keep `answer` under `request_id` (a reused id keeps only its latest answer)."""
        if not self.capacity:
            self.forgotten += 1
            return
        slot = self._next
        self._next = slot + 1 if slot + 1 < self.capacity else 0
        oldest = self._ring[slot]
        if oldest is not None:
            kept = self._answers.get(oldest)
            if kept is not None and kept.slot == slot:
                del self._answers[oldest]
                self.forgotten += 1
        answer.slot = slot
        self._ring[slot] = request_id
        self._answers[request_id] = answer

    def take(self, model: str, request_id: str) -> Answer | None:
        """The answer of `request_id` for `model`, removed: each answer is scored once."""
        answer = self._answers.get(request_id)
        if answer is None or answer.model != model:
            return None
        del self._answers[request_id]
        return answer

    def forget_model(self, model: str) -> None:
        """Drop the answers of `model` (its experiment ended)."""
        for request_id in [k for k, a in self._answers.items() if a.model == model]:
            del self._answers[request_id]
