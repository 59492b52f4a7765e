"""`edge-agent run`: assemble the agent, serve at once, then follow the broker until told to stop.

Order matters: the committed models are loaded and the local endpoint is serving before the
agent touches the network, so an offline device serves immediately. On SIGTERM the agent says
it is going offline, stops its updates, drains in-flight requests and exits. If a background
task dies instead (see edge_common/supervise.py), the agent reports it, stops feeding the
systemd watchdog, drains the same way and exits 1, so that systemd restarts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from edge_agent import eventloop
from edge_agent.config.preflight import Labels
from edge_agent.config.settings import DeviceConfig
from edge_agent.experiments import Experiments
from edge_agent.experiments.install import ExperimentInstaller
from edge_agent.metrics import AgentMetrics
from edge_agent.mqtt import Backoff, run_with_reconnect
from edge_agent.mqtt.link import LinkState
from edge_agent.runtime import ModelRepository
from edge_agent.server import InferenceServer
from edge_agent.storage.state import StateStore
from edge_agent.storage.store import ModelStore
from edge_agent.systemd import SystemdNotifier
from edge_agent.update.activation import Activator
from edge_agent.update.dispatch import Device, Dispatcher, Subscriptions
from edge_agent.update.fetch import MqttChunkFetcher
from edge_agent.update.http_fetch import HttpChunkFetcher
from edge_agent.update.updater import INTERNAL_ERROR, ChunkFetcher, Updater
from edge_agent.uplink.reporting import Reporter
from edge_agent.uplink.spool import SPOOL_DIR, Spool
from edge_agent.uplink.telemetry import Telemetry, TelemetryCollector
from edge_common.listen import listen_error
from edge_common.supervise import Supervisor, TaskFailure, first_of
from edge_protocol import Topics, TrustedState, utc_now
from edge_protocol.messages import EventKind
from edge_protocol.trust import Clock

log = logging.getLogger(__name__)
EXIT_TASK_FAILED = 1
REPORT_TIMEOUT_S = 5.0  # how long a dying agent tries to get its report and goodbye out
# How the agent stays connected: `run_with_reconnect`'s signature (tests plug in a broker double).
FollowBroker = Callable[..., Awaitable[None]]


class Agent:
    """Every long-lived part of the agent, wired together."""

    def __init__(
        self,
        config: DeviceConfig,
        labels: Labels | None = None,
        *,
        follow_broker: FollowBroker = run_with_reconnect,
        monotonic: Callable[[], float] = time.monotonic,
        now: Clock = utc_now,
    ) -> None:
        """`follow_broker`, `monotonic` and `now` are the broker link and the clocks."""
        self.config = config
        self._follow = follow_broker
        self.labels = labels or Labels(str(config.source))
        self.topics = Topics(config.mqtt.topic_prefix)
        self.states = StateStore(config.state_dir)
        self.store = ModelStore(config.state_dir)
        state = self.states.load()
        provisioned = config.root_file.read_bytes()
        self.trust = TrustedState(
            self.states.trusted_root(provisioned),
            device_id=config.device_id,
            assignment_seq=state.assignment_seq,
            assignment_digest=state.assignment_digest,
            clock=now,
        )
        self.repository = ModelRepository()
        self.metrics = AgentMetrics()
        self.subscriptions = Subscriptions()
        self.spool = Spool(config.state_dir / SPOOL_DIR, config.telemetry.spool_max_bytes)
        self.reporter = Reporter(
            config.device_id, self.topics, self.describe, self.spool,
            telemetry_interval_s=config.telemetry.interval_s,
            ack_timeout_s=config.telemetry.ack_timeout_s,
            registry_acks=config.telemetry.registry_acks,
        )  # fmt: skip
        self.link = LinkState(
            up=False, clock=monotonic
        )  # the dispatcher reports every connection and drop
        self.mqtt_fetcher = MqttChunkFetcher(
            self.topics,
            self.subscriptions.subscribe_live,
            self.subscriptions.unsubscribe_live,
            stall_timeout_s=config.updates.download_timeout_s,
            link=self.link,
        )
        activator = Activator(
            self.repository,
            self.metrics,
            options=config.server.runtime,
            store=self.store,
            states=self.states,
            settings=config.updates,
        )
        self.experiments = Experiments(config.experiments)
        self.experiment_installer = ExperimentInstaller(
            config, self.trust, experiments=self.experiments, repository=self.repository,
            activator=activator, store=self.store, states=self.states, reporter=self.reporter,
            fetcher=self._fetcher(), subscribe=self.subscriptions.subscribe, link=self.link,
            unsubscribe=self.subscriptions.unsubscribe,
        )  # fmt: skip
        self.updater = Updater(
            config,
            self.trust,
            states=self.states,
            store=self.store,
            activator=activator,
            reporter=self.reporter,
            fetcher=self._fetcher(),
            subscribe=self.subscriptions.subscribe,
            link=self.link,
            unsubscribe=self.subscriptions.unsubscribe,
            also_kept=lambda: self.experiment_installer.kept.candidates,
        )
        self.dispatcher = Dispatcher(
            Device(config.device_id, self.topics, config.follows),
            trust=self.trust,
            updater=self.updater,
            reporter=self.reporter,
            subscriptions=self.subscriptions,
            link=self.link,
            chunks=self.mqtt_fetcher,
            states=self.states,
            experiments=self.experiment_installer,
        )
        self.server = InferenceServer(
            self.repository, config.server, metrics=self.metrics, status_providers=[self.status],
            experiments=self.experiments,
        )  # fmt: skip
        collector = TelemetryCollector(self.metrics, config.state_dir)
        collector.version_details.append(self.experiments.counters.report)
        self.telemetry = Telemetry(collector, self.reporter, config.telemetry)
        self.server.add_status_provider(self.telemetry.status)
        self.supervisor = Supervisor("the agent")

    def _fetcher(self) -> ChunkFetcher:
        if self.config.artifacts.transport == "mqtt":
            return self.mqtt_fetcher
        return LazyHttpFetcher(self.config)

    def describe(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The (models, trust) parts of the state message."""
        models = self.updater.describe()
        trust = {
            "root_version": self.trust.root.version,
            "assignment_seq": self.trust.assignment_seq,
            "stale": self.trust.is_stale(),
        }
        return models, trust

    def status(self) -> dict[str, Any]:
        """The agent's part of `GET /v1/status`."""
        models, trust = self.describe()
        downloads = {
            "chunks_received": self.mqtt_fetcher.chunks_received,
            "chunk_bytes_received": self.mqtt_fetcher.chunk_bytes_received,
            "chunks_written": self.mqtt_fetcher.chunks_written,
        }
        return {
            "device_id": self.config.device_id,
            "updates": models,
            "trust": trust,
            "downloads": downloads,
        }

    async def run(
        self,
        stop: asyncio.Event,
        on_serving: Callable[[], None] | None = None,
        on_failure: Callable[[TaskFailure], None] | None = None,
    ) -> TaskFailure | None:
        """Serve, follow the broker, and shut down cleanly when `stop` is set.

        `on_serving` is called once the endpoint accepts requests (systemd's READY=1). If a
        background task dies first, `on_failure` hears it before the drain, and it is returned.
        """
        await self._start()
        log.info("serving on %s; device %s", self.server.url, self.config.device_id)
        if on_serving is not None:
            on_serving()
        mqtt = self.supervisor.spawn(self._follow_broker(), "mqtt")
        reporting = self.supervisor.spawn(self.telemetry.run(), "reporting")
        failure = None
        try:
            await first_of(stop.wait(), self.supervisor.failed.wait())
            failure = self.supervisor.failure
            if failure is not None:
                if on_failure is not None:
                    on_failure(failure)
                await self._report_failure(failure, sending=not reporting.done())
        finally:
            # Only a stop that was asked for is clean: probation does not count it as a crash.
            clean = failure is None and stop.is_set()
            await self._shutdown(mqtt, reporting, clean=clean)
        return failure

    async def _start(self) -> None:
        self.supervisor.install()
        await asyncio.to_thread(self.store.remove_debris)
        await asyncio.to_thread(self.states.remove_debris)
        await self.updater.serve_installed()
        # The experiments that ran at the stop, from the kept assignment: their candidates
        # install while the server starts (each waits for its control to serve).
        await self.experiment_installer.resume()
        # Releases of models that are gone: a crash between the two deletions leaves them.
        installed = self.updater.state.installed_releases()
        kept = self.experiment_installer.kept.candidates
        await asyncio.to_thread(self.states.retain_releases, installed | kept)
        try:
            await self._start_server()
        except BaseException:
            await self.experiment_installer.close()
            await self.updater.close()
            self.repository.close()
            raise

    async def _start_server(self) -> None:
        try:
            await self.server.start()
        except OSError as e:  # the address is taken, or not this user's to take
            server, labels = self.config.server, self.labels
            if server.unix_socket is not None:
                message = f"cannot listen on {server.unix_socket} ({e.strerror or e})"
                raise labels.setting(labels.socket).error(message) from e
            message = listen_error(server.host, server.port, e)
            raise labels.setting(labels.listen).error(message) from e

    async def _report_failure(self, failure: TaskFailure, *, sending: bool) -> None:
        # Spooled: sent now if the broker link and the sender still work, else at the next start.
        await self.reporter.event(
            EventKind.FAILED, reason=INTERNAL_ERROR, detail=failure.describe()
        )
        if sending:
            await self.reporter.flush(REPORT_TIMEOUT_S)

    async def _follow_broker(self) -> None:
        settings = self.config.mqtt
        await self._follow(
            settings,
            client_id=self.config.device_id,
            will=self.reporter.offline_will,
            on_connect=self.dispatcher.connected,
            on_message=self.dispatcher.handle,
            backoff=Backoff(settings.reconnect_min_s, settings.reconnect_max_s),
            on_disconnect=self.dispatcher.disconnected,
            on_handler_error=self.dispatcher.handler_failed,
        )

    async def _shutdown(
        self, mqtt: asyncio.Task[None], reporting: asyncio.Task[None], *, clean: bool = False
    ) -> None:
        log.info("stopping: draining requests")
        # What reporting has not sent stays in the spool for the next start.
        await self.supervisor.cancel(reporting)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(REPORT_TIMEOUT_S):
                await self.reporter.publish_offline()
        await self.supervisor.cancel(mqtt)
        await self.experiment_installer.close()
        await self.updater.close(clean=clean)
        await self.server.drain_and_stop()
        await self.supervisor.stop()
        self.repository.close()


class LazyHttpFetcher:
    """The HTTP chunk fetcher, with its client session opened on first use."""

    def __init__(self, config: DeviceConfig) -> None:
        self._config = config

    async def fetch(self, download: Any, progress: Any = None) -> int:
        """Fetch every missing chunk over HTTP with the device's credentials."""
        import aiohttp  # noqa: PLC0415 - only devices on the HTTP transport need a client

        mqtt = self._config.mqtt
        async with aiohttp.ClientSession() as session:
            fetcher = HttpChunkFetcher(
                self._config.artifacts.http_url,
                username=mqtt.username,
                password=mqtt.password or "",
                session=session,
                stall_timeout_s=self._config.updates.download_timeout_s,
            )
            return await fetcher.fetch(download, progress)


def run_agent(config: DeviceConfig, labels: Labels | None = None) -> int:
    """Run the agent until SIGTERM or SIGINT; return the process exit code."""
    log.info("event loop: %s", eventloop.loop_name())
    return eventloop.run(_main(config, labels or Labels(str(config.source))))


async def _main(config: DeviceConfig, labels: Labels) -> int:
    stop = asyncio.Event()
    # A no-op unless systemd (Type=notify) started the agent: see edge_agent/systemd.py.
    notifier = SystemdNotifier.from_environment()

    def on_signal() -> None:
        if not stop.is_set():
            notifier.stopping()
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    agent = _assemble(config, labels)
    agent.repository.add_listener(notifier.model_changed)
    try:
        async with notifier.watchdog_pings():
            failure = await agent.run(
                stop, on_serving=notifier.ready, on_failure=lambda f: notifier.failed(f.describe())
            )
    finally:
        notifier.close()
    return 0 if failure is None else EXIT_TASK_FAILED


def _assemble(config: DeviceConfig, labels: Labels) -> Agent:
    try:
        return Agent(config, labels)
    except OSError as e:  # the checks passed a moment ago: the directory changed under us
        where = e.filename or config.state_dir
        raise labels.setting(labels.state_dir).error(
            f"cannot use {where} ({e.strerror or e})"
        ) from e
