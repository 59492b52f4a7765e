"""Running the endpoint: bind TCP or a unix socket, drain gracefully, stop on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Iterable
from concurrent.futures import Executor
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from aiohttp import web

from edge_agent.experiments import Experiments
from edge_agent.metrics import AgentMetrics
from edge_agent.runtime import ModelRepository
from edge_agent.server.admission import ConnectionCount, ConnectionLimits
from edge_agent.server.app import create_app
from edge_agent.server.body import BODY_BUDGET
from edge_agent.server.collection import pace_collection
from edge_agent.server.connections import GuardedSite, handler_factory
from edge_agent.server.dataplane import DataPlane, StatusProvider
from edge_agent.server.fastlane import FastLane
from edge_agent.server.handlers import CONFIG, DATAPLANE
from edge_agent.server.settings import ServerConfig

if TYPE_CHECKING:
    from edge_agent.server.grpc.server import GrpcServer

log = logging.getLogger(__name__)


class InferenceServer:
    """The local inference endpoint: `start`, serve, then `drain_and_stop`."""

    def __init__(
        self,
        repository: ModelRepository,
        config: ServerConfig,
        *,
        metrics: AgentMetrics | None = None,
        executor: Executor | None = None,
        status_providers: Iterable[StatusProvider] = (),
        experiments: Experiments | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics or AgentMetrics()
        self.app = create_app(
            repository,
            config,
            metrics=self.metrics,
            executor=executor,
            status_providers=status_providers,
            experiments=experiments,
        )
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._connections = ConnectionCount(ConnectionLimits.of(config))
        app = self.app
        self.fast_lane = FastLane(app[DATAPLANE], app[CONFIG], app[BODY_BUDGET])
        self.add_status_provider(self._client_limits)
        self.grpc: GrpcServer | None = None
        if config.grpc.enabled:
            # grpcio is an optional extra: imported only when [grpc] asks for it.
            from edge_agent.server.grpc.server import GrpcServer  # noqa: PLC0415

            self.grpc = GrpcServer(self.dataplane, config)
            # on_shutdown runs before the dataplane closes: RPCs in flight finish first.
            self.app.on_shutdown.append(self._drain_grpc)

    async def _drain_grpc(self, app: web.Application) -> None:
        if self.grpc is not None:
            await self.grpc.drain()

    @property
    def dataplane(self) -> DataPlane:
        """The service behind the handlers (status providers, readiness)."""
        return self.app[DATAPLANE]

    def add_status_provider(self, provider: StatusProvider) -> None:
        """Merge what `provider` returns into GET /v1/status."""
        self.dataplane.status_providers.append(provider)

    def _client_limits(self) -> dict[str, Any]:
        budget = self.app[BODY_BUDGET]
        return {
            "server": {
                "connections": self._connections.served + self._connections.refused,
                "max_connections": self.config.max_connections,
                "buffered_body_bytes": budget.held_bytes,
                "max_buffered_body_bytes": budget.limit_bytes,
            }
        }

    @property
    def port(self) -> int | None:
        """The TCP port bound (useful with port 0), or None on a unix socket."""
        return self._port

    @property
    def url(self) -> str:
        """`http://host:port`, or `unix:/path` for a unix socket."""
        if self.config.unix_socket is not None:
            return f"unix:{self.config.unix_socket}"
        host = self.config.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        """Bind the listener and start serving."""
        if self._runner is not None:
            raise RuntimeError("the server is already running")
        runner = web.AppRunner(
            self.app,
            handle_signals=False,
            access_log=None,
            shutdown_timeout=self.config.shutdown_timeout_s,
        )
        await runner.setup()
        try:
            await self._bind(runner)
            if self.grpc is not None:
                await self.grpc.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        pace_collection()  # the process serves from now on: see collection.py
        log.info("inference endpoint listening on %s", self.url)

    async def _bind(self, runner: web.AppRunner) -> None:
        path = self.config.unix_socket
        # The connection cap, the deadlines and the fast lane, on every connection.
        factory = handler_factory(runner, self._connections, self.fast_lane)
        if path is not None:
            await GuardedSite(runner, factory, path=str(path)).start()
            os.chmod(path, self.config.unix_socket_mode)
            return
        await GuardedSite(runner, factory, host=self.config.host, port=self.config.port).start()
        self._port = int(runner.addresses[0][1])

    async def drain_and_stop(self) -> None:
        """Stop accepting, let in-flight requests finish (up to the timeout), then close."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self.dataplane.draining = True
        log.info("inference endpoint draining")
        await runner.cleanup()
        if self.config.unix_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                self.config.unix_socket.unlink()
        log.info("inference endpoint stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.drain_and_stop()


async def serve_until_signalled(
    server: InferenceServer, signals: Iterable[signal.Signals] = (signal.SIGTERM, signal.SIGINT)
) -> None:
    """Start `server`, wait for one of `signals`, then drain and stop it."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    handled = list(signals)
    for sig in handled:
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
        await stop.wait()
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
        await server.drain_and_stop()
