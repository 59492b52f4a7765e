"""What the registry stores of a device message: the fields docs/protocol.md lists, bounded.

`edge_protocol.topics.parse_device_message` checks the common fields and the event kind. This
goes on: state and events keep only the fields of docs/protocol.md section 8, each of the type
and within the list it names (phases, event kinds), with integers that fit the database; fields
the registry does not know are left out. Human text (an event's `detail`, a model's
`last_error`) is cut to `[ingest] max_text_chars`, identifiers that are too long make the
message malformed, and a stored message may not exceed its kind's byte cap. Telemetry is free
in shape (receivers ignore what they do not know) but gets the same value checks and cap.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from edge_protocol.errors import MessageFormatError
from edge_protocol.fields import SHA256_PATTERN, is_valid_name
from edge_protocol.messages import UPDATE_PHASES
from edge_protocol.topics import KIND_EVENTS, KIND_STATE
from model_registry.config import IngestConfig

INT_MAX = 2**63 - 1  # what the database's BIGINT columns and signed documents hold
MAX_DEPTH = 16  # telemetry nests six levels deep; nothing a device sends needs more
CUT_MARK = "…"
_CODE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")  # reason codes
_AGENT_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}$")
_EPOCH = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_COMMON = ("schema", "device_id", "timestamp")


@dataclass(frozen=True)
class MessageLimits:
    """The caps of `[ingest]` that apply to one message."""

    max_text_chars: int = 1024
    max_event_bytes: int = 16 * 1024
    max_state_bytes: int = 64 * 1024
    max_telemetry_bytes: int = 64 * 1024

    @classmethod
    def from_config(cls, config: IngestConfig) -> MessageLimits:
        """The limits configured in registry.toml."""
        return cls(
            config.max_text_chars,
            config.max_event_bytes,
            config.max_state_bytes,
            config.max_telemetry_bytes,
        )


def clean_message(kind: str, body: dict[str, Any], limits: MessageLimits) -> dict[str, Any]:
    """Return what to store of a parsed message; MessageFormatError if it breaks the rules."""
    _check_values(body, kind)
    if kind == KIND_STATE:
        return _capped(_state(body, limits), limits.max_state_bytes, kind)
    if kind == KIND_EVENTS:
        return _capped(_event(body, limits), limits.max_event_bytes, kind)
    return _telemetry(body, limits)


def _check_values(body: Any, kind: str) -> None:
    """Refuse nesting deeper than MAX_DEPTH, non-finite floats and integers beyond 64 bits."""
    stack: list[tuple[Any, int]] = [(body, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth >= MAX_DEPTH:
                raise MessageFormatError(f"{kind}: nested more than {MAX_DEPTH} levels deep")
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
        elif isinstance(value, float) and not math.isfinite(value):
            raise MessageFormatError(f"{kind}: a number is out of range")
        elif isinstance(value, int) and not -INT_MAX - 1 <= value <= INT_MAX:
            raise MessageFormatError(f"{kind}: an integer does not fit in 64 bits")


def _state(body: dict[str, Any], limits: MessageLimits) -> dict[str, Any]:
    out = {key: body[key] for key in (*_COMMON, "online") if key in body}
    if not body["online"]:
        return out  # the will: nothing else is read from it
    if (version := body.get("agent_version")) is not None:
        out["agent_version"] = _match(version, _AGENT_VERSION, "state.agent_version")
    if (interval := body.get("telemetry_interval_s")) is not None:
        out["telemetry_interval_s"] = _interval_s(interval)
    out["trust"] = _trust(body["trust"])
    models = body["models"]
    for name in models:
        if not is_valid_name(name):
            raise MessageFormatError(f"state.models: {_show(name)} is not a model name")
    out["models"] = {name: _model(name, entry, limits) for name, entry in models.items()}
    return out


def _interval_s(value: Any) -> float:
    """How often the device reports (docs/protocol.md: a number of seconds, 1 to 86400)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= 86400:
        raise MessageFormatError("state.telemetry_interval_s: expected seconds from 1 to 86400")
    return float(value)


def _trust(trust: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if (root := trust.get("root_version")) is not None:
        out["root_version"] = _integer(root, "state.trust.root_version", 1)
    if (seq := trust.get("assignment_seq")) is not None:
        # The registry signs seq + 1 on top of it: that must fit too.
        out["assignment_seq"] = _integer(seq, "state.trust.assignment_seq", 0, INT_MAX - 1)
    if (stale := trust.get("stale")) is not None:
        if not isinstance(stale, bool):
            raise MessageFormatError("state.trust.stale: expected true or false")
        out["stale"] = stale
    return out


def _model(name: str, entry: Any, limits: MessageLimits) -> dict[str, Any]:
    path = f"state.models.{name}"
    if not isinstance(entry, dict):
        raise MessageFormatError(f"{path}: expected an object")
    out: dict[str, Any] = {}
    for slot in ("active", "previous"):
        if slot in entry:
            out[slot] = None if entry[slot] is None else _installed(entry[slot], f"{path}.{slot}")
    if (phase := entry.get("phase")) is not None:
        if phase not in UPDATE_PHASES:
            raise MessageFormatError(f"{path}.phase: expected one of {', '.join(UPDATE_PHASES)}")
        out["phase"] = phase
    if "last_error" in entry:
        error = entry["last_error"]
        out["last_error"] = None if error is None else _text(error, f"{path}.last_error", limits)
    return out


def _installed(value: Any, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MessageFormatError(f"{path}: expected an object or null")
    sha256 = value.get("sha256")
    if not isinstance(sha256, str) or not SHA256_PATTERN.fullmatch(sha256):
        raise MessageFormatError(f"{path}.sha256: expected 64 lowercase hex characters")
    return {"version": _integer(value.get("version"), f"{path}.version", 1), "sha256": sha256}


def _event(body: dict[str, Any], limits: MessageLimits) -> dict[str, Any]:
    out = {key: body[key] for key in (*_COMMON, "event")}
    if (model := body.get("model")) is not None:
        if not is_valid_name(model):
            raise MessageFormatError(f"events.model: {_show(model)} is not a model name")
        out["model"] = model
    for key, minimum in (("version", 1), ("seq", 0)):
        if (number := body.get(key)) is not None:
            out[key] = _integer(number, f"events.{key}", minimum)
    if (reason := body.get("reason")) is not None:
        out["reason"] = _match(reason, _CODE, "events.reason")
    if (detail := body.get("detail")) is not None:
        out["detail"] = _text(detail, "events.detail", limits)
    if (progress := body.get("progress")) is not None:
        out["progress"] = _progress(progress)
    return out | _numbering(body, KIND_EVENTS)


def _progress(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        raise MessageFormatError("events.progress: expected an object")
    return {
        key: _integer(value.get(key), f"events.progress.{key}", 0)
        for key in ("chunks_done", "chunks_total")
        if key in value
    }


def _telemetry(body: dict[str, Any], limits: MessageLimits) -> dict[str, Any]:
    out = body | _numbering(body, "telemetry")
    if _size(out) <= limits.max_telemetry_bytes:
        return out
    # What the agent itself leaves out near the protocol's cap (docs/telemetry.md section 1).
    models = out.get("models")
    if isinstance(models, dict):
        out["models"] = {
            name: {k: v for k, v in entry.items() if k != "features"}
            if isinstance(entry, dict)
            else entry
            for name, entry in models.items()
        }
        out["features_dropped"] = True
    if _size(out) > limits.max_telemetry_bytes:
        out = _without_bins(out)
    return _capped(out, limits.max_telemetry_bytes, "telemetry")


def _without_bins(out: dict[str, Any]) -> dict[str, Any]:
    """The report without the drift bins of its versions (still over the cap without features)."""
    models = out.get("models")
    if not isinstance(models, dict):
        return out

    def versions_without_bins(versions: Any) -> Any:
        if not isinstance(versions, dict):
            return versions
        return {
            v: {k: x for k, x in n.items() if k != "bins"} if isinstance(n, dict) else n
            for v, n in versions.items()
        }

    out["models"] = {
        name: entry | {"versions": versions_without_bins(entry.get("versions"))}
        if isinstance(entry, dict) and "versions" in entry
        else entry
        for name, entry in models.items()
    }
    out["bins_dropped"] = True
    return out


def _numbering(body: dict[str, Any], kind: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if (seq := body.get("msg_seq")) is not None:
        out["msg_seq"] = _integer(seq, f"{kind}.msg_seq", 0)
    if (epoch := body.get("msg_epoch")) is not None:
        out["msg_epoch"] = _match(epoch, _EPOCH, f"{kind}.msg_epoch")
    return out


def clean_numbering(epoch: Any, seq: Any) -> tuple[str, int]:
    """A valid (msg_epoch, msg_seq) pair; MessageFormatError if either breaks its rule."""
    return _match(epoch, _EPOCH, "msg_epoch"), _integer(seq, "msg_seq", 0)


def _integer(value: Any, path: str, minimum: int, maximum: int = INT_MAX) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not minimum <= value <= maximum:
        raise MessageFormatError(f"{path}: expected an integer from {minimum} to {maximum}")
    return value


def _match(value: Any, pattern: re.Pattern[str], path: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise MessageFormatError(f"{path}: {_show(value)} does not match {pattern.pattern}")
    return value


def _text(value: Any, path: str, limits: MessageLimits) -> str:
    if not isinstance(value, str):
        raise MessageFormatError(f"{path}: expected a string")
    if len(value) <= limits.max_text_chars:
        return value
    return value[: limits.max_text_chars - len(CUT_MARK)] + CUT_MARK


def _capped(body: dict[str, Any], cap: int, kind: str) -> dict[str, Any]:
    size = _size(body)
    if size > cap:
        raise MessageFormatError(f"{kind}: {size} bytes to store, over the cap of {cap}")
    return body


def _size(body: dict[str, Any]) -> int:
    """Bytes of the JSON the storage writes for `body` (ASCII-escaped, compact)."""
    return len(json.dumps(body, separators=(",", ":"), allow_nan=False))


def _show(value: Any) -> str:
    """A short, printable rendering of a refused value for a log line."""
    text = ascii(value)
    return text if len(text) <= 40 else text[:37] + "..."
