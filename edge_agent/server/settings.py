"""Settings of the local inference server (TOML `[server]`, with `[runtime]` nested)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from edge_agent.errors import ConfigError
from edge_agent.runtime import BatchPolicy, RuntimeOptions

NonFinitePolicy = Literal["reject", "allow"]
MiB = 1024 * 1024
GiB = 1024 * MiB
MAX_UNIX_PATH = 107  # sun_path holds 108 bytes including the terminating NUL


@dataclass(frozen=True)
class GrpcConfig:
    """The optional gRPC listener (TOML `[grpc]`): off unless a port or a socket is set."""

    host: str = "127.0.0.1"
    port: int | None = None  # None: no TCP listener; 0 picks a free port (tests)
    unix_socket: Path | None = None  # listen on this path only, not host:port (str accepted)
    unix_socket_mode: int = 0o660
    max_concurrent_rpcs: int = 64  # RPCs handled at once; beyond it RESOURCE_EXHAUSTED

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"grpc.host: expected a host name or address, got {self.host!r}")
        if self.port is not None:
            _check_int("grpc.port", self.port, 0, 65_535)
        _check_int("grpc.unix_socket_mode", self.unix_socket_mode, 0, 0o777)
        _check_int("grpc.max_concurrent_rpcs", self.max_concurrent_rpcs, 1, 65_536)
        if isinstance(self.unix_socket, str):  # as read from TOML
            object.__setattr__(self, "unix_socket", Path(self.unix_socket))
        if self.unix_socket is not None:
            _check_socket_path("grpc.unix_socket", self.unix_socket)

    @property
    def enabled(self) -> bool:
        """Whether the agent serves gRPC at all."""
        return self.port is not None or self.unix_socket is not None


@dataclass(frozen=True)
class ServerConfig:
    """Where the server listens, who may call it, and the limits it enforces."""

    host: str = "127.0.0.1"
    port: int = 8080  # the port device bundles write too; 0 picks a free port (tests)
    unix_socket: Path | None = None  # listen on this path only, not host:port (str accepted)
    unix_socket_mode: int = 0o660  # file mode of the socket: owner and group may connect
    token: str | None = None  # bearer token required on every route but /v2/health/*
    max_body_bytes: int = 8 * MiB  # request body after Content-Encoding is undone
    max_batch_size: int = 64  # rows merged into one session.run
    max_queue_delay_ms: float = 1.0  # longest wait to fill a batch while the model is busy
    max_queue_size: int = 256  # requests waiting per model; beyond it 503 + Retry-After
    max_request_batch: int = 1024  # rows in one request (dimension 0 of a batchable input)
    non_finite: NonFinitePolicy = "reject"  # NaN/Inf in floating inputs: refuse or pass on
    retry_after_s: int = 1  # Retry-After sent with 503 when a queue is full
    shutdown_timeout_s: float = 30.0  # longest wait for in-flight requests when draining
    # Slow and greedy clients (docs/operations.md, "Limits"): connections and body memory.
    max_connections: int = 256  # open connections served; beyond it 503 + Retry-After
    max_buffered_body_bytes: int = 32 * MiB  # request bodies held at once, all requests together
    header_timeout_s: float = 5.0  # a request head must arrive in full within this
    body_timeout_s: float = 30.0  # a request body must arrive in full within this
    idle_timeout_s: float = 30.0  # a kept-alive connection waits this long for its next request
    send_timeout_s: float = 30.0  # a client that reads none of its response for this long is cut
    runtime: RuntimeOptions = field(default_factory=RuntimeOptions)
    grpc: GrpcConfig = field(default_factory=GrpcConfig)  # the same service over gRPC

    def __post_init__(self) -> None:
        self._check_listener()
        if self.token is not None:
            _check_token(self.token)
        _check_int("server.max_body_bytes", self.max_body_bytes, 1024, 1024 * MiB)
        _check_int("server.max_batch_size", self.max_batch_size, 1, 65_536)
        _check_int("server.max_queue_size", self.max_queue_size, 1, 1_000_000)
        _check_int("server.max_request_batch", self.max_request_batch, 1, 1_000_000)
        _check_int("server.retry_after_s", self.retry_after_s, 1, 3600)
        _check_float("server.max_queue_delay_ms", self.max_queue_delay_ms, 0.0, 1000.0)
        _check_float("server.shutdown_timeout_s", self.shutdown_timeout_s, 0.0, 3600.0)
        self._check_client_limits()
        if self.non_finite not in ("reject", "allow"):
            raise ConfigError(
                f"server.non_finite: expected 'reject' or 'allow', got {self.non_finite!r}"
            )
        if not isinstance(self.runtime, RuntimeOptions):
            raise ConfigError("server.runtime: expected RuntimeOptions")
        self._check_grpc()

    def _check_grpc(self) -> None:
        if not isinstance(self.grpc, GrpcConfig):
            raise ConfigError("server.grpc: expected GrpcConfig")
        grpc = self.grpc
        if grpc.unix_socket is not None and grpc.unix_socket == self.unix_socket:
            raise ConfigError(f"grpc.unix_socket: {grpc.unix_socket} is the HTTP socket too")
        tcp = self.unix_socket is None and grpc.unix_socket is None
        if tcp and grpc.port not in (None, 0) and grpc.port == self.port:
            raise ConfigError(f"grpc.port: {grpc.port} is the HTTP port too")

    def _check_listener(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"server.host: expected a host name or address, got {self.host!r}")
        _check_int("server.port", self.port, 0, 65_535)
        _check_int("server.unix_socket_mode", self.unix_socket_mode, 0, 0o777)
        if self.unix_socket is None:
            return
        if isinstance(self.unix_socket, str):  # as read from TOML
            object.__setattr__(self, "unix_socket", Path(self.unix_socket))
        _check_socket_path("server.unix_socket", self.unix_socket)

    def _check_client_limits(self) -> None:
        _check_int("server.max_connections", self.max_connections, 1, 65_536)
        _check_int("server.max_buffered_body_bytes", self.max_buffered_body_bytes, 1024, 64 * GiB)
        if self.max_buffered_body_bytes < self.max_body_bytes:
            raise ConfigError(
                f"server.max_buffered_body_bytes: {self.max_buffered_body_bytes / MiB:g} MiB "
                f"cannot hold one body of the largest size accepted (the max_body limit, "
                f"{self.max_body_bytes / MiB:g} MiB)"
            )
        for key in ("header_timeout_s", "body_timeout_s", "idle_timeout_s", "send_timeout_s"):
            _check_float(f"server.{key}", getattr(self, key), 0.1, 86_400.0)

    @property
    def allow_non_finite(self) -> bool:
        """Whether NaN and infinities are accepted in floating-point inputs."""
        return self.non_finite == "allow"

    def batch_policy(self) -> BatchPolicy:
        """The batcher limits these settings describe."""
        return BatchPolicy(
            max_batch_size=self.max_batch_size,
            max_queue_delay_s=self.max_queue_delay_ms / 1000.0,
            max_queue_size=self.max_queue_size,
            max_concurrent_batches=self.runtime.inference_workers,
            retry_after_s=float(self.retry_after_s),
        )


def _check_socket_path(key: str, path: object) -> None:
    if not isinstance(path, Path) or not path.is_absolute():
        raise ConfigError(f"{key}: expected an absolute path, got {path!r}")
    if len(str(path).encode()) > MAX_UNIX_PATH:
        raise ConfigError(f"{key}: {path} is longer than {MAX_UNIX_PATH} bytes")


def _check_token(token: object) -> None:
    if not isinstance(token, str) or len(token) < 16:
        raise ConfigError("server.token: expected a string of at least 16 characters")
    if not token.isascii() or not token.isprintable() or " " in token:
        raise ConfigError("server.token: only printable ASCII without spaces can be a token")


def _check_int(key: str, value: object, lowest: int, highest: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not lowest <= value <= highest:
        raise ConfigError(f"{key}: must be between {lowest} and {highest}, got {value}")


def _check_float(key: str, value: object, lowest: float, highest: float) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if not lowest <= value <= highest:
        raise ConfigError(f"{key}: must be between {lowest} and {highest}, got {value}")
