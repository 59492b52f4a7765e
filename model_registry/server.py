"""`model-registry serve`: the API, the MQTT side and the upkeep tasks in one process.

Everything started here is owned by one AsyncExitStack and torn down in reverse order on
SIGINT/SIGTERM: API first (no new work), then tasks, then the MQTT connection, the embedded
broker and storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
from collections.abc import AsyncIterator, Coroutine
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from aiohttp import web

from edge_protocol import load_private_key
from model_registry.api.app import create_app
from model_registry.api.metrics import CounterSource, GaugeSource, RegistryMetrics
from model_registry.config import EMBEDDED, RegistryConfig, parse_host_port
from model_registry.errors import ConfigError, NotFoundError
from model_registry.fsutil import write_file_atomic
from model_registry.home import SERVE_FILE
from model_registry.mqtt.broker_admin import DynsecAdmin, EmbeddedAccess
from model_registry.mqtt.client import MqttConnection
from model_registry.mqtt.credentials import hash_password
from model_registry.mqtt.embedded import EmbeddedBroker
from model_registry.mqtt.publisher import Publisher
from model_registry.services.context import RegistryContext
from model_registry.services.ingest import DeviceIngest
from model_registry.services.maintenance import maintenance_loop, sync_broker
from model_registry.signing import ReleaseSigner
from model_registry.storage import BlobStore, Storage, open_storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    """Command-line overrides of registry.toml."""

    listen: str | None = None
    mqtt_url: str | None = None
    embedded_broker: str | None = None  # HOST:PORT


@dataclass
class RunningRegistry:
    """A started registry: its context, the API's bound address and its MQTT URL."""

    ctx: RegistryContext
    api_url: str
    mqtt_url: str | None
    ingest: DeviceIngest | None


@asynccontextmanager
async def running_registry(
    config: RegistryConfig, options: ServeOptions = ServeOptions()
) -> AsyncIterator[RunningRegistry]:
    """Start every part of the registry; stop them all when the block exits."""
    async with AsyncExitStack() as stack:
        storage = open_storage(config.database_location)
        await storage.open()
        stack.push_async_callback(storage.close)
        ctx = make_context(config, storage)
        mqtt_url, ingest = await _start_mqtt(stack, ctx, options)
        metrics = RegistryMetrics()
        if ingest is not None:
            _ingest_metrics(metrics, ingest)
        api_url = await _start_api(
            stack, create_app(ctx, metrics), options.listen or config.api.listen
        )
        ctx.api_url = api_url
        log.info("registry API on %s, MQTT %s", api_url, mqtt_url or "off")
        yield RunningRegistry(ctx, api_url, mqtt_url, ingest)


async def serve(config: RegistryConfig, options: ServeOptions) -> None:
    """Run the registry until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with running_registry(config, options) as registry:
        print(f"model registry serving on {registry.api_url}", flush=True)
        if registry.mqtt_url:
            print(f"MQTT broker: {registry.mqtt_url}", flush=True)
        # Tells local CLI commands where this process listens, even with --listen overrides.
        endpoint = {"api_url": registry.api_url, "mqtt_url": registry.mqtt_url, "pid": os.getpid()}
        write_file_atomic(config.home / SERVE_FILE, json.dumps(endpoint).encode())
        try:
            await stop.wait()
        finally:
            (config.home / SERVE_FILE).unlink(missing_ok=True)
    print("model registry stopped", flush=True)


def make_context(config: RegistryConfig, storage: Storage) -> RegistryContext:
    """Assemble the context: blobs, and the signer with the release key from the home."""
    key_path = config.path(config.signing.release_key)
    try:
        release_key = load_private_key(key_path)
    except FileNotFoundError as e:
        raise ConfigError(f"release key {key_path} not found") from e
    signer = ReleaseSigner(
        release_key,
        release_lifetime=timedelta(days=config.signing.release_expiry_days),
        assignment_lifetime=timedelta(days=config.signing.assignment_expiry_days),
    )
    return RegistryContext(config, storage, BlobStore(config.path(config.storage.blobs)), signer)


async def _start_mqtt(
    stack: AsyncExitStack, ctx: RegistryContext, options: ServeOptions
) -> tuple[str, DeviceIngest]:
    config = ctx.config
    password = _read_secret(config, config.mqtt.password_file)
    url = options.mqtt_url or config.mqtt.url
    embedded = bool(options.embedded_broker) or url == EMBEDDED
    if embedded:
        url = await _start_embedded(stack, ctx, options.embedded_broker, password)
    connection = MqttConnection(
        url,
        client_id=f"model-registry-{config.mqtt.username}",
        username=config.mqtt.username,
        password=password,
        ca_file=str(config.path(config.mqtt.ca_file)) if config.mqtt.ca_file else None,
        keepalive_s=config.mqtt.keepalive_s,
    )
    await connection.connect()
    stack.push_async_callback(connection.close)
    ctx.broker_url = url
    ctx.publisher = Publisher(connection, config.topics, ctx.blobs)
    # Before the ingest subscribes, so the answers topic is routed before anything arrives.
    ctx.broker_access = EmbeddedAccess() if embedded else DynsecAdmin(connection, config.topics)
    ingest = DeviceIngest(ctx, config.topics)
    for topic_filter in ingest.subscriptions():
        connection.subscribe(topic_filter)
    await sync_broker(ctx)
    _own_task(stack, ingest.run(connection.messages), "device message ingest")
    _own_task(stack, _resync_on_reconnect(connection, ctx), "broker resync")
    _own_task(stack, maintenance_loop(ctx), "maintenance")
    return url, ingest


async def _start_embedded(
    stack: AsyncExitStack, ctx: RegistryContext, listen: str | None, registry_password: str
) -> str:
    config = ctx.config
    host, port = parse_host_port(listen or config.mqtt.embedded_listen, "embedded broker address")
    registry_hash = hash_password(registry_password)
    devices = {d.device_id: d.password_hash for d in await ctx.storage.devices()}

    async def lookup(username: str) -> str | None:
        if username == config.mqtt.username:
            return registry_hash
        if username not in devices:  # provisioned after start-up
            with contextlib.suppress(NotFoundError):
                devices[username] = (await ctx.storage.get_device(username)).password_hash
        return devices.get(username)

    broker = EmbeddedBroker(
        host, port, topics=config.topics, registry_user=config.mqtt.username, password_lookup=lookup
    )
    await broker.start()
    stack.push_async_callback(broker.stop)
    return f"mqtt://{host}:{broker.port}"


async def _start_api(stack: AsyncExitStack, app: web.Application, listen: str) -> str:
    host, port = parse_host_port(listen, "API listen address")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound_port = runner.addresses[0][1] if runner.addresses else port
    return f"http://{host}:{bound_port}"


def _own_task(stack: AsyncExitStack, coro: Coroutine[Any, Any, None], name: str) -> None:
    task = asyncio.create_task(coro, name=name)

    async def cancel() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(cancel)


def _ingest_metrics(metrics: RegistryMetrics, ingest: DeviceIngest) -> None:
    metrics.extra_counters["model_registry_ingest_stored_total"] = CounterSource(
        "Device messages stored, by kind.", "kind", lambda: ingest.stored
    )
    metrics.extra_counters["model_registry_ingest_dropped_total"] = CounterSource(
        "Device messages dropped, by reason.", "reason", lambda: ingest.dropped
    )
    metrics.extra_gauges["model_registry_ingest_backlog"] = GaugeSource(
        "Device messages received and not yet stored.", lambda: ingest.backlog
    )


async def _resync_on_reconnect(connection: MqttConnection, ctx: RegistryContext) -> None:
    # A broker that restarted without persistence has lost every retained message: publish
    # the registry's state again after each reconnection (it is idempotent when nothing was lost).
    while True:
        await connection.reconnected.get()
        log.info("reconnected to the broker; publishing retained state again")
        await sync_broker(ctx)


def _read_secret(config: RegistryConfig, relative: str) -> str:
    path = config.path(relative)
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from e
