"""Errors of the registry: one root, split by cause, free of HTTP status codes.

The API's error middleware maps each class to a status code and the CLI maps them to exit
codes; services and domain code only say what went wrong.
"""

from __future__ import annotations


class RegistryError(Exception):
    """Root of every error the registry raises on purpose."""


class InvalidInputError(RegistryError, ValueError):
    """Input that is malformed or breaks a rule: a bad file, field, option or argument."""


class InvalidModelError(InvalidInputError):
    """A model file that is not a loadable ONNX model."""


class UnsupportedMediaError(InvalidInputError):
    """A request body of a content type the endpoint does not take."""


class TooLargeError(InvalidInputError):
    """Input larger than the configured limit."""


class AccuracyGateError(RegistryError):
    """A quantized model whose quality dropped more than the configured limit."""


class ChampionGateError(AccuracyGateError):
    """A new version that scores worse than the champion it would replace, past the limit."""


class BuildError(RegistryError):
    """A conversion or quantization step that failed for a reason other than bad input."""


class NotFoundError(RegistryError, LookupError):
    """A model, version, device, deployment or artifact that does not exist."""


class UnknownNameError(NotFoundError):
    """A model, device or group named by the caller that does not exist.

    It keeps what kind of name it was and the name, so the API can add the close names that do
    exist ("did you mean ...?") where the caller may see them.
    """

    def __init__(self, kind: str, name: str, message: str | None = None) -> None:
        super().__init__(message or f"no {kind} '{name}'")
        self.kind = kind
        self.name = name


class ConflictError(RegistryError):
    """A request that contradicts stored state: a duplicate device, an existing home."""


class UnavailableError(RegistryError):
    """An operation that needs something the registry does not have now: its MQTT broker, or
    its database server when that does not answer. Try again later (HTTP 503)."""


class AuthenticationError(RegistryError):
    """A request without a valid token."""


class PermissionDeniedError(RegistryError):
    """A valid token whose role is too small for the operation."""


class ConfigError(RegistryError):
    """A registry.toml that cannot be used; names the file, the key and what is wrong."""
