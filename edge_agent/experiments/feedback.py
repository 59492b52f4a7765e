"""`POST /v2/models/{m}/feedback`: the application's ground truth, checked and scored.

A body is one item or `{"feedback": [items]}`; an item is `{"id": request id, "label": L}` for
a classifier or `{"id": ..., "value": x}` for a regressor, L or x a list with one entry per
row when the request had several rows. Every malformed part is refused naming the item and
the field (InvalidRequestError: a 400), before any item is scored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edge_agent.errors import InvalidRequestError
from edge_agent.experiments.answers import MAX_ROWS, Answer, Prediction, abs_difference, same_label
from edge_agent.experiments.routing import MAX_KEY_LENGTH

MAX_LABEL_LENGTH = 256


@dataclass(frozen=True)
class FeedbackItem:
    """One request's truth: a label or a value per row."""

    request_id: str
    kind: str  # "label" or "value"
    truths: tuple[Prediction, ...]


def parse_feedback(body: Any, max_items: int) -> list[FeedbackItem]:
    """The items of a feedback body, or InvalidRequestError naming what is wrong."""
    if isinstance(body, dict) and "feedback" in body:
        extra = sorted(set(body) - {"feedback"})
        if extra:
            raise InvalidRequestError(f"unknown field {extra[0]!r} beside 'feedback'")
        raw = body["feedback"]
        if not isinstance(raw, list) or not 1 <= len(raw) <= max_items:
            raise InvalidRequestError(f"'feedback' must be an array of 1 to {max_items} items")
    elif isinstance(body, dict):
        raw = [body]
    else:
        raise InvalidRequestError(
            'the feedback must be a JSON object: {"id": ..., "label": ...} or {"feedback": [...]}'
        )
    return [_item(entry, f"feedback[{index}]") for index, entry in enumerate(raw)]


def _item(entry: Any, where: str) -> FeedbackItem:
    if not isinstance(entry, dict):
        raise InvalidRequestError(f"{where} must be an object with 'id' and 'label' or 'value'")
    unknown = sorted(set(entry) - {"id", "label", "value"})
    if unknown:
        raise InvalidRequestError(f"{where}: unknown field {unknown[0]!r} (id, label, value)")
    request_id = entry.get("id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_KEY_LENGTH:
        raise InvalidRequestError(f"{where}.id must be the request's id, a string of 1 to 256")
    if ("label" in entry) == ("value" in entry):
        raise InvalidRequestError(f"{where}: give exactly one of 'label' and 'value'")
    kind = "label" if "label" in entry else "value"
    raw = entry[kind]
    truths = raw if isinstance(raw, list) else [raw]
    if not 1 <= len(truths) <= MAX_ROWS:
        raise InvalidRequestError(f"{where}.{kind}: a list of 1 to {MAX_ROWS} rows")
    check = _check_label if kind == "label" else _check_value
    for row, truth in enumerate(truths):
        check(truth, f"{where}.{kind}" + (f"[{row}]" if isinstance(raw, list) else ""))
    return FeedbackItem(request_id, kind, tuple(truths))


def _check_label(truth: Any, where: str) -> None:
    if isinstance(truth, bool) or not isinstance(truth, int | str):
        raise InvalidRequestError(f"{where}: a label is an integer or a string")
    if isinstance(truth, str) and len(truth) > MAX_LABEL_LENGTH:
        raise InvalidRequestError(f"{where}: a label has at most {MAX_LABEL_LENGTH} characters")
    if isinstance(truth, int) and not -(2**63) <= truth < 2**64:
        raise InvalidRequestError(f"{where}: the label does not fit 64 bits")


def _check_value(truth: Any, where: str) -> None:
    if isinstance(truth, bool) or not isinstance(truth, int | float) or not math.isfinite(truth):
        raise InvalidRequestError(f"{where}: a value is a finite number")


def score(item: FeedbackItem, answer: Answer | None) -> tuple[dict[str, Any], dict[str, float]]:
    """The item's result, and what it adds to the answering variant's counts."""
    result: dict[str, Any] = {"id": item.request_id}
    if answer is None:
        result["status"] = "unknown"  # never answered here, forgotten, or already scored
        return result, {}
    result["version"] = str(answer.version)
    if answer.kind != item.kind:
        result["status"] = "refused"
        result["error"] = f"the model answers with a {answer.kind}, this item gives a {item.kind}"
        return result, {}
    if len(item.truths) != len(answer.rows):
        result["status"] = "refused"
        result["error"] = (
            f"the request had {len(answer.rows)} row(s), the item gives {len(item.truths)}"
        )
        return result, {}
    result["status"] = "matched"
    pairs = list(zip(answer.rows, item.truths, strict=True))
    if item.kind == "label":
        correct = sum(same_label(p, t) for p, t in pairs)
        result["correct"] = correct
        return result, {"feedback_labels": len(pairs), "feedback_correct": correct}
    errors = [e for p, t in pairs if (e := abs_difference(p, t)) is not None]
    result["abs_error"] = sum(errors) / len(errors) if errors else None
    return result, {
        "feedback_values": len(errors),
        "feedback_abs_error_sum": sum(errors),
        "feedback_abs_error_sq_sum": sum(e * e for e in errors),
    }
