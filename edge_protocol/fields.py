"""Field-level validation shared by the metadata types: names, hashes, times, readers.

Every error names the full path of the offending field (`release.artifact.size`) and what was
expected, because the person reading it is usually looking at a document, not at this code.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from edge_protocol.errors import FormatError, MetadataFormatError

# Model names and device ids become MQTT topic levels: no '/', '+', '#', no empty level,
# nothing that starts with '$' (reserved by brokers), and a bound that keeps topics short.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SHA256_PATTERN = re.compile(r"^[0-9a-f]{64}$")
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TIME_PATTERN = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def is_valid_name(value: object) -> bool:
    """Return whether `value` may be used as a model name or device id."""
    return isinstance(value, str) and NAME_PATTERN.fullmatch(value) is not None


def format_time(moment: datetime) -> str:
    """Render an aware datetime as the wire's ISO-8601 UTC form, `2026-01-31T12:00:00Z`."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: wire times must be timezone-aware")
    return moment.astimezone(UTC).strftime(TIME_FORMAT)


def parse_time(text: str, path: str = "time") -> datetime:
    """Parse the wire's ISO-8601 UTC form, refusing any other spelling."""
    if not isinstance(text, str) or not _TIME_PATTERN.fullmatch(text):
        raise MetadataFormatError(
            f"{path}: expected an ISO-8601 UTC time like 2026-01-31T12:00:00Z"
        )
    try:
        return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError as e:
        raise MetadataFormatError(f"{path}: {text!r} is not a valid date and time") from e


class FieldReader:
    """Reads typed fields out of one JSON object and remembers which ones it saw."""

    def __init__(self, obj: Any, path: str, error: type[FormatError] = MetadataFormatError) -> None:
        self._error = error
        if not isinstance(obj, dict):
            raise error(f"{path}: expected an object")
        self._obj: dict[str, Any] = obj
        self._path = path
        self._seen: set[str] = set()

    def path(self, key: str) -> str:
        """Return the dotted path of `key` for error messages and nested readers."""
        return f"{self._path}.{key}"

    def raw(self, key: str) -> Any:
        """Return a required field's value, whatever its type."""
        if key not in self._obj:
            raise self._error(f"{self.path(key)}: required field is missing")
        self._seen.add(key)
        return self._obj[key]

    def optional(self, key: str) -> Any:
        """Return an optional field's value, or None when it is absent."""
        self._seen.add(key)
        return self._obj.get(key)

    def boolean(self, key: str) -> bool:
        """Return a required boolean field."""
        value = self.raw(key)
        if not isinstance(value, bool):
            raise self._error(f"{self.path(key)}: expected true or false")
        return value

    def string(self, key: str, *, max_length: int = 1024, name: bool = False) -> str:
        """Return a string field; `name=True` also applies the topic-safe name rule."""
        value = self.raw(key)
        if not isinstance(value, str) or len(value) > max_length:
            raise self._error(
                f"{self.path(key)}: expected a string of at most {max_length} characters"
            )
        if name and not NAME_PATTERN.fullmatch(value):
            raise self._error(
                f"{self.path(key)}: {value!r} is not a valid name "
                "(letters, digits, '.', '_', '-'; starting with a letter or digit; max 128)"
            )
        return value

    def constant(self, key: str, expected: str) -> str:
        """Return a string field that must equal `expected`."""
        value = self.raw(key)
        if value != expected:
            raise self._error(f"{self.path(key)}: expected {expected!r}, got {value!r}")
        return expected

    def integer(self, key: str, *, minimum: int) -> int:
        """Return an integer field of at least `minimum` (booleans are not integers here)."""
        value = self.raw(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise self._error(f"{self.path(key)}: expected an integer >= {minimum}")
        return value

    def sha256(self, key: str) -> str:
        """Return a field holding a lowercase hex SHA-256 digest."""
        value = self.raw(key)
        if not isinstance(value, str) or not SHA256_PATTERN.fullmatch(value):
            raise self._error(f"{self.path(key)}: expected 64 lowercase hex characters")
        return value

    def time(self, key: str) -> datetime:
        """Return a field holding an ISO-8601 UTC time."""
        try:
            return parse_time(self.raw(key), self.path(key))
        except MetadataFormatError as e:
            raise self._error(str(e)) from e

    def obj(self, key: str) -> dict[str, Any]:
        """Return a field holding a JSON object."""
        value = self.raw(key)
        if not isinstance(value, dict):
            raise self._error(f"{self.path(key)}: expected an object")
        return value

    def array(self, key: str, *, max_items: int) -> list[Any]:
        """Return a field holding a JSON array of at most `max_items` items."""
        value = self.raw(key)
        if not isinstance(value, list) or len(value) > max_items:
            raise self._error(f"{self.path(key)}: expected a list of at most {max_items}")
        return value

    def unrecognized(self) -> dict[str, Any]:
        """Return the fields no reader method asked for, to be kept and re-serialized."""
        return {k: v for k, v in self._obj.items() if k not in self._seen}


def check_spec_version(reader: FieldReader, majors: tuple[int, ...]) -> str:
    """Read `spec_version` and refuse a major version this implementation does not speak.

    A document of another major version is refused rather than half-read: a newer major is
    used exactly when an older receiver would otherwise ignore a part that changes the
    document's meaning (docs/protocol.md, section 4).
    """
    value = reader.string("spec_version", max_length=16)
    major = value.split(".", maxsplit=1)[0]
    if not major.isdigit() or int(major) not in majors:
        spoken = " or ".join(f"{m}.x" for m in majors)
        raise MetadataFormatError(
            f"{reader.path('spec_version')}: {value!r} is not a {spoken} document; "
            f"this implementation speaks spec_version {' and '.join(map(str, majors))}"
        )
    return value
