"""Reading a TOML config file that may be anything: missing, huge, binary or malformed.

A config (or a secret it points to) is small; `/dev/zero` or a mistyped path to a model is not,
so reads are bounded and every failure becomes a sentence the caller prefixes with the file.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

MAX_CONFIG_BYTES = 1 << 20  # far above any real config; small enough to refuse a wrong file


class ConfigFileError(ValueError):
    """Why a config file cannot be read; `missing` when it does not exist at all."""

    def __init__(self, message: str, *, missing: bool = False) -> None:
        super().__init__(message)
        self.missing = missing


def read_bounded(path: Path, limit: int) -> bytes:
    """At most `limit` bytes of `path`; OSError as open() raises it, ConfigFileError if larger."""
    with path.open("rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ConfigFileError(f"{path} is larger than {limit} bytes")
    return data


def read_small(path: Path, limit: int) -> bytes:
    """The bytes of a file expected to be small and not empty; ConfigFileError saying why not.

    Both services' start-up checks read their keys, certificates, roots and secrets this way,
    so a missing, oversized, unreadable or empty file is named in the same sentence by both.
    """
    try:
        data = read_bounded(path, limit)
    except ConfigFileError:  # larger than the limit
        raise
    except FileNotFoundError:
        raise ConfigFileError(f"there is no file at {path}", missing=True) from None
    except IsADirectoryError:
        raise ConfigFileError(f"{path} is a directory, not a file") from None
    except OSError as e:
        raise ConfigFileError(f"cannot read {path} ({e.strerror or e})") from e
    if not data:
        raise ConfigFileError(f"{path} is empty")
    return data


def load_toml(path: Path, limit: int = MAX_CONFIG_BYTES) -> dict[str, Any]:
    """The tables of a TOML file, or ConfigFileError saying in words what is wrong with it."""
    try:
        data = read_bounded(path, limit)
    except FileNotFoundError as e:
        raise ConfigFileError("no such file", missing=True) from e
    except ConfigFileError as e:
        raise ConfigFileError(f"it is larger than {limit} bytes") from e
    except OSError as e:
        raise ConfigFileError(f"cannot read it ({e.strerror or e})") from e
    try:
        return tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigFileError(f"not valid TOML ({e})") from e
