"""`model-registry serve`: the API, the MQTT side and the upkeep tasks in one process.

Everything started here is owned by one AsyncExitStack and torn down in reverse order on
SIGINT/SIGTERM: API first (no new work), then tasks, then the MQTT connection, the embedded
broker and storage. The background tasks belong to a `Supervisor`: if one dies, `serve` tears
everything down the same way and returns 1.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta

from aiohttp import web

from edge_common.files import remove_temp_files, write_atomic
from edge_common.listen import listen_error
from edge_common.supervise import Supervisor, first_of
from model_registry.api.app import create_app
from model_registry.api.metrics import CounterSource, FamilySource, GaugeSource, RegistryMetrics
from model_registry.config import RegistryConfig, ServeOptions, parse_host_port
from model_registry.errors import ConfigError, NotFoundError
from model_registry.home import SERVE_FILE
from model_registry.mqtt.broker_admin import DynsecAdmin, EmbeddedAccess
from model_registry.mqtt.client import MqttConnection
from model_registry.mqtt.credentials import hash_password
from model_registry.mqtt.embedded import EmbeddedBroker
from model_registry.mqtt.publisher import Publisher
from model_registry.preflight import (
    Setting,
    load_release_key,
    read_mqtt_password,
    setting,
    sqlite_path,
)
from model_registry.rollouts.controller import rollout_loop
from model_registry.services.acks import AckSender
from model_registry.services.context import RegistryContext
from model_registry.services.drift import INSUFFICIENT, SEVERITY, FeatureDrift
from model_registry.services.drift_watch import DriftWatch
from model_registry.services.history import history_loop
from model_registry.services.ingest import DeviceIngest
from model_registry.services.ingest_limits import TOP_DEVICES
from model_registry.services.maintenance import maintenance_loop, sync_broker
from model_registry.services.retention import retention_loop
from model_registry.storage import BlobStore, Storage, open_storage
from model_registry.trust.signing import ReleaseSigner

log = logging.getLogger(__name__)
_Sample = tuple[Mapping[str, str], float]
EXIT_TASK_FAILED = 1
REPLICA_DEBRIS_AGE_S = 3600.0  # unfinished writes in a shared directory older than this are debris


@dataclass
class RunningRegistry:
    """A started registry: its context, the API's bound address and its MQTT URL."""

    ctx: RegistryContext
    api_url: str
    mqtt_url: str | None
    ingest: DeviceIngest | None
    supervisor: Supervisor


@asynccontextmanager
async def running_registry(
    config: RegistryConfig, options: ServeOptions | None = None
) -> AsyncIterator[RunningRegistry]:
    """Start every part of the registry; stop them all when the block exits."""
    options = options or ServeOptions()
    async with AsyncExitStack() as stack:
        storage = open_storage(config.database_location)
        try:
            await storage.open()
        except ConfigError as e:
            raise setting(config, "storage.database").error(str(e)) from e
        stack.push_async_callback(storage.close)
        ctx = make_context(config, storage)
        await asyncio.to_thread(ctx.blobs.root.mkdir, parents=True, exist_ok=True)
        await _remove_debris(ctx)
        supervisor = Supervisor("the registry")
        mqtt_url, ingest = await _start_mqtt(stack, ctx, options, supervisor)
        metrics = RegistryMetrics()
        if ingest is not None:
            _ingest_metrics(metrics, ingest)
            watch = DriftWatch(ctx.storage, config.drift, ctx.clock)
            supervisor.spawn(watch.run(), "drift")
            _drift_metrics(metrics, watch)
        listen, key = options.api_listen(config)
        api_url = await _start_api(stack, create_app(ctx, metrics), listen, setting(config, key))
        ctx.api_url = api_url
        log.info("registry API on %s, MQTT %s", api_url, mqtt_url or "off")
        yield RunningRegistry(ctx, api_url, mqtt_url, ingest, supervisor)


async def serve(config: RegistryConfig, options: ServeOptions) -> int:
    """Run the registry until SIGINT or SIGTERM (0), or until a background task dies (1)."""
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
        write_atomic(config.home / SERVE_FILE, json.dumps(endpoint).encode(), mode=0o644)
        try:
            await first_of(stop.wait(), registry.supervisor.failed.wait())
        finally:
            (config.home / SERVE_FILE).unlink(missing_ok=True)
    failure = registry.supervisor.failure
    print("model registry stopped" + (f": {failure.describe()}" if failure else ""), flush=True)
    return 0 if failure is None else EXIT_TASK_FAILED


async def _remove_debris(ctx: RegistryContext) -> None:
    """Delete what a crash left mid-write: no writer of this home runs before we serve.

    Replicas on a database server may share the blob directory (or the home), where another
    replica may be writing now: they delete only what is older than a push could take.
    """
    min_age_s = 0.0 if sqlite_path(ctx.config) is not None else REPLICA_DEBRIS_AGE_S
    removed = await asyncio.to_thread(ctx.blobs.remove_temp_files, min_age_s)
    home = ctx.config.home
    for directory in (home, home / "metadata" / "root", home / "keys", home / "secrets"):
        if directory.is_dir():
            removed += len(await asyncio.to_thread(remove_temp_files, directory, min_age_s))
    if removed:
        log.info("removed %d unfinished writes left by an earlier crash", removed)


def make_context(config: RegistryConfig, storage: Storage) -> RegistryContext:
    """Assemble the context: blobs, and the signer with the release key from the home."""
    signer = ReleaseSigner(
        load_release_key(config),
        release_lifetime=timedelta(days=config.signing.release_expiry_days),
        assignment_lifetime=timedelta(days=config.signing.assignment_expiry_days),
    )
    return RegistryContext(config, storage, BlobStore(config.path(config.storage.blobs)), signer)


async def _start_mqtt(
    stack: AsyncExitStack, ctx: RegistryContext, options: ServeOptions, supervisor: Supervisor
) -> tuple[str, DeviceIngest]:
    config = ctx.config
    password = await asyncio.to_thread(read_mqtt_password, config)
    url = options.mqtt_url or config.mqtt.url
    embedded_listen = options.embedded_listen(config)
    embedded = None
    if embedded_listen is not None:
        embedded = await _start_embedded(stack, ctx, embedded_listen[0], password)
        url = embedded.url
    ingest = DeviceIngest(ctx, config.topics)
    replica = sqlite_path(config) is None
    connection = MqttConnection(
        url,
        client_id=_client_id(config, replica),
        clean_session=replica,
        username=config.mqtt.username,
        password=password,
        ca_file=str(config.path(config.mqtt.ca_file)) if config.mqtt.ca_file else None,
        keepalive_s=config.mqtt.keepalive_s,
        messages=ingest.queue,
    )
    await connection.connect()
    stack.push_async_callback(connection.close)
    ctx.broker_url = url
    ctx.broker_link = connection
    ctx.publisher = Publisher(connection, config.topics, ctx.blobs)
    # Before the ingest subscribes, so the answers topic is routed before anything arrives.
    ctx.broker_access = (
        EmbeddedAccess(embedded) if embedded else DynsecAdmin(connection, config.topics)
    )
    # The embedded broker serves this process alone: nothing to share there.
    shared = config.mqtt.shared_subscriptions and embedded is None
    for topic_filter in ingest.subscriptions(shared=shared):
        connection.subscribe(topic_filter)
    await sync_broker(ctx)
    stack.push_async_callback(supervisor.stop)  # before the connection closes
    supervisor.spawn(ingest.run(connection.messages), "device message ingest")
    acks = AckSender(ingest.acks, connection, config.topics)
    supervisor.spawn(acks.run(), "device message acknowledgements")
    supervisor.spawn(_resync_on_reconnect(connection, ctx), "broker resync")
    supervisor.spawn(maintenance_loop(ctx), "maintenance")
    supervisor.spawn(retention_loop(ctx), "retention")
    supervisor.spawn(rollout_loop(ctx), "rollout controller")
    supervisor.spawn(history_loop(ctx), "history")
    return url, ingest


def _client_id(config: RegistryConfig, replica: bool) -> str:
    """The registry's MQTT client id: one per home on SQLite, one per process on a server.

    Replicas on one database must not share an id (the broker would disconnect one whenever
    the other connects). They use clean sessions: a killed replica leaves no session behind
    that the broker keeps queueing device messages for; what reached no replica is sent again
    by its device, which resends whatever the registry has not acknowledged.
    """
    base = f"model-registry-{config.mqtt.username}"
    return f"{base}-{socket.gethostname()}-{os.getpid()}" if replica else base


async def _start_embedded(
    stack: AsyncExitStack, ctx: RegistryContext, listen: str, registry_password: str
) -> EmbeddedBroker:
    config = ctx.config
    host, port = parse_host_port(listen, "embedded broker address")
    registry_hash = hash_password(registry_password)

    async def lookup(username: str) -> str | None:
        if username == config.mqtt.username:
            return registry_hash
        # Asked at every CONNECT: a device added since start-up logs in, a removed one no more.
        try:
            return (await ctx.storage.get_device(username)).password_hash
        except NotFoundError:
            return None

    broker = EmbeddedBroker(
        host, port, topics=config.topics, registry_user=config.mqtt.username, password_lookup=lookup
    )
    await broker.start()
    stack.push_async_callback(broker.stop)
    return broker


async def _start_api(
    stack: AsyncExitStack, app: web.Application, listen: str, where: Setting
) -> str:
    host, port = parse_host_port(listen, "API listen address")
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as e:  # the address is taken, or not this user's to take
        raise where.error(listen_error(host, port, e)) from e
    bound_port = runner.addresses[0][1] if runner.addresses else port
    return f"http://{host}:{bound_port}"


def _ingest_metrics(metrics: RegistryMetrics, ingest: DeviceIngest) -> None:
    metrics.extra_counters["model_registry_ingest_stored_total"] = CounterSource(
        "Device messages stored, by kind.", "kind", lambda: ingest.stored
    )
    metrics.extra_counters["model_registry_ingest_dropped_total"] = CounterSource(
        "Device messages dropped, by reason.", "reason", lambda: ingest.dropped
    )
    metrics.extra_counters["model_registry_ingest_dropped_top_devices"] = CounterSource(
        f"Device messages dropped since start, for the {TOP_DEVICES} devices with the most.",
        "device_id",
        ingest.drop_log.top,
        type="gauge",
    )
    metrics.extra_counters["model_registry_ingest_acks_total"] = CounterSource(
        "Acknowledgement messages to devices: sent, not_sent (resent by the devices), and"
        " overflowed (message numbers beyond the bound of one round).",
        "outcome",
        lambda: ingest.acks.outcomes,
    )
    metrics.extra_counters["model_registry_ingest_detail_dropped_total"] = CounterSource(
        "Per-version telemetry fields left out of the version points for not being counts"
        " (a negative bin count), by field; the reports are stored.",
        "field",
        lambda: ingest.detail_dropped,
    )
    metrics.extra_gauges["model_registry_ingest_backlog"] = GaugeSource(
        "Device messages received and not yet stored.", lambda: ingest.backlog
    )


def _drift_metrics(metrics: RegistryMetrics, watch: DriftWatch) -> None:
    """The fleet-wide drift gauges of the last pass, and the counts left out."""

    def samples(
        value: Callable[[FeatureDrift], float | None],
    ) -> Iterator[tuple[Mapping[str, str], float]]:
        for (model, version, feature), row in sorted(watch.fleet.items()):
            number = value(row)
            if number is not None:
                yield {"model": model, "version": str(version), "feature": feature}, number

    metrics.extra_families["model_registry_drift_psi"] = FamilySource(
        "Population stability index of each feature of a model version, fleet-wide, over the"
        " drift window (from the last drift pass of this registry).",
        "gauge",
        lambda: samples(lambda r: r.psi),
    )
    metrics.extra_families["model_registry_drift_max_cdf_gap"] = FamilySource(
        "Largest gap between the profile's and the fleet's cumulative distributions.",
        "gauge",
        lambda: samples(lambda r: r.max_cdf_gap),
    )
    metrics.extra_families["model_registry_drift_status"] = FamilySource(
        "Drift status of each feature, fleet-wide: 0 ok, 1 warn, 2 alert (absent: too few).",
        "gauge",
        lambda: samples(lambda r: None if r.status == INSUFFICIENT else SEVERITY[r.status]),
    )
    metrics.extra_counters["model_registry_drift_ignored_total"] = CounterSource(
        "Reports' drift counts left out, by reason (bin_counts, not_counts, no_profile).",
        "reason",
        lambda: watch.ignored,
    )


async def _resync_on_reconnect(connection: MqttConnection, ctx: RegistryContext) -> None:
    # A broker that restarted without persistence has lost every retained message: publish
    # the registry's state again after each reconnection (it is idempotent when nothing was lost).
    while True:
        await connection.reconnected.get()
        log.info("reconnected to the broker; publishing retained state again")
        await sync_broker(ctx)
