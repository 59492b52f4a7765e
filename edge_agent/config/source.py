"""The device.toml being read, and the checks of its values that several sections share.

Every error names the file (`ConfigSource.error`); relative paths are anchored at its directory.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from edge_agent.errors import ConfigError
from edge_common.toml_file import ConfigFileError, read_bounded

T = TypeVar("T")
MAX_SECRET_BYTES = 64 * 1024  # a password or token file


@dataclass(frozen=True)
class ConfigSource:
    """The file being read: named in every error; its directory anchors relative paths."""

    path: Path
    base: Path

    def error(self, message: str) -> ConfigError:
        """A ConfigError about this file."""
        return ConfigError(f"{self.path}: {message}")


def construct(src: ConfigSource, cls: Callable[..., T], values: Mapping[str, Any]) -> T:
    """`cls(**values)`, its ConfigError named with the file."""
    try:
        return cls(**values)
    except ConfigError as e:
        raise src.error(str(e)) from e


def existing_file(src: ConfigSource, key: str, path: Path) -> Path:
    """`path`, if it is a file; otherwise an error naming `key`."""
    if path.is_dir():
        raise src.error(f"{key}: {path} is a directory, not a file")
    if not path.is_file():
        raise src.error(f"{key}: there is no file at {path}")
    return path


def read_secret(src: ConfigSource, key: str, path: Path) -> str:
    """The content of a one-line secret file, without its trailing newline."""
    try:
        secret = read_bounded(path, MAX_SECRET_BYTES).decode("utf-8").rstrip("\r\n")
    except ConfigFileError as e:
        raise src.error(f"{key}: {e}") from e
    except OSError as e:
        raise src.error(f"{key}: cannot read {path} ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise src.error(f"{key}: {path} is not UTF-8 text") from e
    if not secret:
        raise src.error(f"{key}: {path} is empty")
    return secret


def check_url(src: ConfigSource, key: str, url: str, schemes: tuple[str, ...]) -> None:
    """Refuse `url` unless it is SCHEME://HOST[:PORT] for one of `schemes`, without credentials."""
    parts = urlsplit(url)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port that is not a number or above 65535
        port_ok = False
    expected = " or ".join(f"{scheme}://HOST[:PORT]" for scheme in schemes)
    if parts.scheme not in schemes or not parts.hostname or not port_ok:
        raise src.error(f"{key}: {url!r} is not a URL of the form {expected}")
    if parts.username is not None:  # credentials belong in username and password_file
        raise src.error(f"{key}: {url!r} must not contain credentials")
