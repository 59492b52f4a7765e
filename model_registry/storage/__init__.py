"""Where the registry keeps its records (`Storage`) and its model files (`BlobStore`)."""

from __future__ import annotations

from pathlib import Path

from model_registry.errors import ConfigError
from model_registry.storage.base import (
    DUPLICATE,
    ROLES,
    STORED,
    UNKNOWN_DEVICE,
    AssignmentUpdate,
    DeploymentRecord,
    DeviceMessageRecord,
    DeviceRecord,
    DeviceReport,
    DriftRecord,
    ExperimentRecord,
    ModelSummary,
    ReleaseRecord,
    Storage,
    TokenRecord,
    VersionPoint,
)
from model_registry.storage.blobs import BlobStore
from model_registry.storage.history_records import DeviceLiveness, ResourcePoint
from model_registry.storage.postgres import PostgresStorage
from model_registry.storage.rollout_records import (
    ROLLOUT_ACTIVE,
    ROLLOUT_STATES,
    RolloutDecision,
    RolloutDeployment,
    RolloutRecord,
    RolloutWave,
)
from model_registry.storage.sqlite import SQLiteStorage

__all__ = [
    "DUPLICATE",
    "ROLES",
    "ROLLOUT_ACTIVE",
    "ROLLOUT_STATES",
    "STORED",
    "UNKNOWN_DEVICE",
    "AssignmentUpdate",
    "BlobStore",
    "DeploymentRecord",
    "DeviceLiveness",
    "DeviceMessageRecord",
    "DeviceRecord",
    "DeviceReport",
    "DriftRecord",
    "ExperimentRecord",
    "ModelSummary",
    "PostgresStorage",
    "ReleaseRecord",
    "ResourcePoint",
    "RolloutDecision",
    "RolloutDeployment",
    "RolloutRecord",
    "RolloutWave",
    "SQLiteStorage",
    "Storage",
    "TokenRecord",
    "VersionPoint",
    "open_storage",
]

_SQLITE_SCHEME = "sqlite://"
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_storage(dsn_or_path: str | Path) -> Storage:
    """Return the (not yet opened) storage for a location: a `postgresql://` URL, a
    `sqlite:///abs/path.db` URL or a file path; raises ConfigError for anything else."""
    if isinstance(dsn_or_path, Path):
        return SQLiteStorage(dsn_or_path)
    location = dsn_or_path.strip()
    if location.startswith(_POSTGRES_SCHEMES):
        return PostgresStorage(location)
    if location.startswith(_SQLITE_SCHEME):
        path = location.removeprefix(_SQLITE_SCHEME)
        if not path.startswith("/"):
            raise ConfigError(
                f"database: {dsn_or_path!r} needs an absolute path, as in sqlite:///var/registry.db"
            )
        return SQLiteStorage(Path(path))
    if "://" in location:
        raise ConfigError(f"database: {dsn_or_path!r} is neither a SQLite path nor a known URL")
    if not location:
        raise ConfigError("database: the location is empty")
    return SQLiteStorage(Path(location))
