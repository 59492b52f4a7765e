"""The gRPC listener: a grpc.aio server on the agent's event loop, over the shared DataPlane."""

from __future__ import annotations

import contextlib
import logging
import os

import grpc

from edge_agent.server.dataplane import DataPlane
from edge_agent.server.grpc.service import InferenceService
from edge_agent.server.settings import ServerConfig

log = logging.getLogger(__name__)


class GrpcServer:
    """`start` binds `[grpc]`'s address; `drain` stops accepting and waits for in-flight RPCs."""

    def __init__(self, dataplane: DataPlane, config: ServerConfig) -> None:
        self.config = config.grpc
        self._server_config = config
        self._service = InferenceService(dataplane, config.token)
        self._server: grpc.aio.Server | None = None
        self.port: int | None = None

    @property
    def target(self) -> str:
        """What a client dials: `host:port`, or `unix:/path`."""
        if self.config.unix_socket is not None:
            return f"unix:{self.config.unix_socket}"
        host = self.config.host
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve; OSError when the address cannot be had."""
        options = [
            # The same limit as an HTTP body; beyond it grpc answers RESOURCE_EXHAUSTED.
            ("grpc.max_receive_message_length", self._server_config.max_body_bytes),
            ("grpc.so_reuseport", 0),  # a port already taken must fail, not be shared
        ]
        server = grpc.aio.server(
            options=options, maximum_concurrent_rpcs=self.config.max_concurrent_rpcs
        )
        server.add_generic_rpc_handlers((self._service.handler(),))
        address = self._address()
        try:
            port = server.add_insecure_port(address)
        except RuntimeError as e:  # grpc's way of saying the bind failed
            raise OSError(f"cannot listen for gRPC on {address} ({e})") from e
        if port == 0 and self.config.unix_socket is None:
            raise OSError(f"cannot listen for gRPC on {address}")
        await server.start()
        if self.config.unix_socket is not None:
            os.chmod(self.config.unix_socket, self.config.unix_socket_mode)
        self._server, self.port = server, port
        log.info("gRPC endpoint listening on %s", self.target)

    def _address(self) -> str:
        if self.config.unix_socket is not None:
            return f"unix:{self.config.unix_socket}"
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"{host}:{self.config.port}"

    async def drain(self) -> None:
        """Refuse new RPCs, let those running finish (up to shutdown_timeout_s), then stop."""
        server, self._server = self._server, None
        if server is None:
            return
        await server.stop(grace=self._server_config.shutdown_timeout_s)
        if self.config.unix_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                self.config.unix_socket.unlink()
        log.info("gRPC endpoint stopped")
