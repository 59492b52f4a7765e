"""The aiohttp application of the local inference endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor

from aiohttp import web
from aiohttp.typedefs import Middleware

from edge_agent.experiments import Experiments
from edge_agent.metrics import AgentMetrics
from edge_agent.runtime import ModelRepository
from edge_agent.server.body import BODY_BUDGET, BodyBudget
from edge_agent.server.connections import connection_middleware
from edge_agent.server.dataplane import DataPlane, StatusProvider
from edge_agent.server.handlers import CONFIG, DATAPLANE, METRICS, routes
from edge_agent.server.middleware import request_middleware
from edge_agent.server.settings import ServerConfig


def create_app(
    repository: ModelRepository,
    config: ServerConfig,
    *,
    metrics: AgentMetrics | None = None,
    executor: Executor | None = None,
    status_providers: Iterable[StatusProvider] = (),
    experiments: Experiments | None = None,
) -> web.Application:
    """Build the application serving `repository` under `config`.

    Without an `executor`, the app creates a thread pool of `config.runtime.inference_workers`
    threads for onnxruntime, measures its hand-off (models cheaper than that run on the loop)
    and shuts it down on cleanup; a given executor stays the caller's.
    """
    metrics = metrics or AgentMetrics()
    metrics.attach(repository)
    pool = executor or ThreadPoolExecutor(
        config.runtime.inference_workers, thread_name_prefix="edge-agent-infer"
    )
    dataplane = DataPlane(repository, config, metrics, pool, experiments)
    dataplane.status_providers.extend(status_providers)
    # Outermost first: the connection guard, then token, errors and metrics in one layer
    # (each layer is a coroutine call on every request).
    middlewares: list[Middleware] = [
        connection_middleware,
        request_middleware(metrics, repository, config.token),
    ]
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_bytes)
    app[DATAPLANE], app[CONFIG], app[METRICS] = dataplane, config, metrics
    app[BODY_BUDGET] = BodyBudget(config.max_buffered_body_bytes, config.retry_after_s)
    app.add_routes(routes())
    if executor is None:
        # Only the pool the app owns is measured: a caller's executor may be busy or gated,
        # and without the measurement every model runs on the executor, as before.
        app.on_startup.append(_calibrate)
    app.on_shutdown.append(_begin_drain)
    # cleanup_ctx tears down in reverse: batchers stop first, then the pool they run on.
    if executor is None:
        app.cleanup_ctx.append(_owned_executor(pool))
    app.cleanup_ctx.append(_dataplane_lifetime)
    return app


async def _calibrate(app: web.Application) -> None:
    await app[DATAPLANE].calibrate()


async def _begin_drain(app: web.Application) -> None:
    # Runs before aiohttp waits for in-flight requests: readiness turns false at once.
    app[DATAPLANE].draining = True


def _owned_executor(
    pool: Executor,
) -> Callable[[web.Application], AsyncIterator[None]]:
    async def lifetime(app: web.Application) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(pool.shutdown, wait=True)

    return lifetime


async def _dataplane_lifetime(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[DATAPLANE].close()
