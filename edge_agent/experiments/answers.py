"""What a model answered, in the terms feedback speaks: a label or a value per row.

A model with an integer or string output is a classifier and its first such output is the
label (a scikit-learn classifier's `label`); otherwise the first floating output's first
column is the value (a regressor's `variable`). `AnswerMemory` keeps the answers of recent
request ids, bounded, so that feedback arriving later finds which variant answered and what.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from edge_agent.runtime.model import Array
from edge_protocol import ModelIO

LABEL_TYPES = frozenset(
    {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64", "BYTES"}
)
FLOAT_TYPES = frozenset({"FP16", "FP32", "FP64"})
MAX_ROWS = 64  # rows of one request whose answers are kept; feedback beyond them is refused

Prediction = int | str | float


class Answer:
    """One request's answer: which version gave it and its label or value per row.

    Made from a copy of the output's first column and turned into Python values only when
    asked: most answers are never scored, and the request should not pay for it.
    """

    __slots__ = ("_column", "_rows", "kind", "model", "version")

    def __init__(
        self, model: str, version: int, kind: str, rows: tuple[Prediction, ...] | Array
    ) -> None:
        self.model = model
        self.version = version
        self.kind = kind  # "label" or "value"
        self._rows = rows if isinstance(rows, tuple) else None
        self._column = None if isinstance(rows, tuple) else rows

    @property
    def rows(self) -> tuple[Prediction, ...]:
        """The label or value of each row."""
        if self._rows is None:
            self._rows = tuple(_predictions(self.kind, self._column))
            self._column = None
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


def read_answer(
    model: str, version: int, outputs: Mapping[str, Array], io: ModelIO
) -> Answer | None:
    """The answer in `outputs` (the first MAX_ROWS rows), or None when it has no label or value."""
    found = _column(outputs, io, MAX_ROWS)
    if found is None:
        return None
    kind, column = found
    return Answer(model, version, kind, column.copy())  # a copy: the outputs may be large


def predictions(outputs: Mapping[str, Array], io: ModelIO) -> tuple[str, list[Prediction]] | None:
    """(kind, the label or value of each row), or None when the outputs have neither."""
    found = _column(outputs, io)
    if found is None:
        return None
    kind, column = found
    return kind, _predictions(kind, column)


def _column(
    outputs: Mapping[str, Array], io: ModelIO, limit: int | None = None
) -> tuple[str, Array] | None:
    """(kind, the first column of the output feedback speaks of, its first `limit` rows)."""
    found = output_kind(io)
    if found is None or found[1] not in outputs:
        return None
    kind, name = found
    array = outputs[name]
    if array.size == 0:  # no rows: nothing to compare (reshape below needs one element)
        return kind, array.reshape(0)
    return kind, array.reshape(array.shape[0], -1)[:limit, 0] if array.ndim else array.reshape(1)


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
    """The answers of the most recent `capacity` request ids; the oldest is forgotten first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._answers: OrderedDict[str, Answer] = OrderedDict()
        self._lock = threading.Lock()
        self.forgotten = 0  # answers pushed out before their feedback came

    def __len__(self) -> int:
        return len(self._answers)

    def remember(self, request_id: str, answer: Answer) -> None:
        """Keep `answer` under `request_id` (a reused id keeps only its latest answer)."""
        with self._lock:
            self._answers.pop(request_id, None)
            self._answers[request_id] = answer
            while len(self._answers) > self.capacity:
                self._answers.popitem(last=False)
                self.forgotten += 1

    def take(self, model: str, request_id: str) -> Answer | None:
        """The answer of `request_id` for `model`, removed: each answer is scored once."""
        with self._lock:
            answer = self._answers.get(request_id)
            if answer is None or answer.model != model:
                return None
            del self._answers[request_id]
            return answer

    def forget_model(self, model: str) -> None:
        """Drop the answers of `model` (its experiment ended)."""
        with self._lock:
            for request_id in [k for k, a in self._answers.items() if a.model == model]:
                del self._answers[request_id]
