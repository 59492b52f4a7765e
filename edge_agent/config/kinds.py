"""The value types of device.toml's keys: each its name in errors, its test and conversion."""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NOT_HOST_PORT = "is not HOST:PORT (write IPv6 addresses as [::1]:8080)"


@dataclass(frozen=True)
class Kind:
    """A TOML value type: its name in error messages, its test, its conversion."""

    description: str
    accepts: Callable[[object], bool]
    convert: Callable[[Path, Any], Any] = lambda _base, value: value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)  # TOML has nan and inf; no setting of ours means anything by them


def _is_strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


INT = Kind("an integer", _is_int)
NUMBER = Kind("a number", _is_number, lambda _base, value: float(value))
STRING = Kind("a string", lambda value: isinstance(value, str))
BOOLEAN = Kind("true or false", lambda value: isinstance(value, bool))
STRINGS = Kind("an array of strings", _is_strings, lambda _base, value: tuple(value))
# An absolute path stays as it is: `base / "/abs"` is "/abs".
PATH = Kind("a non-empty path", lambda v: isinstance(v, str) and v != "", lambda b, v: b / v)
# The bundle template writes `ca_file = ""` when there is no CA, so empty means "not set".
OPTIONAL_PATH = Kind("a path", STRING.accepts, lambda b, v: b / v if v else None)


def choice(options: Collection[str]) -> Kind:
    return Kind(" or ".join(repr(o) for o in options), lambda value: value in options)


_KIND_OF_TYPE: dict[Any, Kind] = {
    bool: BOOLEAN,
    int: INT,
    float: NUMBER,
    str: STRING,
    Path: PATH,
    Path | None: OPTIONAL_PATH,
    tuple[str, ...]: STRINGS,
}


def keys_of(cls: type[Any], *, skip: Collection[str] = ()) -> dict[str, Kind]:
    """The TOML keys that are simply the dataclass fields of `cls`, with their kinds."""
    hints = typing.get_type_hints(cls)
    keys = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint = hints[f.name]
        literal = typing.get_origin(hint) is typing.Literal
        keys[f.name] = choice(typing.get_args(hint)) if literal else _KIND_OF_TYPE[hint]
    return keys
