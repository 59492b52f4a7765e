"""An in-process simulator of one device and its registry, for the update state machine.

In the spirit of python-tuf's RepositorySimulator: the agent is the real `Agent` (dispatcher,
trust, updater, activator, probation, model store, state files, spool, inference server and
onnxruntime), assembled from a `DeviceConfig` in a temporary state directory. Only two things are
doubles, and both implement the agent's own interfaces: the broker (`SimBroker`, plugged in where
`run_with_reconnect` would be) and the clock.

The clock is the event loop's: `SimLoop.time()` reads a `SimClock` that moves only when the test
calls `Sim.advance`, so every deadline (`release_timeout_s`, `download_timeout_s`, `probation_s`,
write retries) fires exactly when the test says and never on a slow machine. The agent's
connected-time clock and its trust clock (expiry) read the same `SimClock`. Waiting for the
agent to do something is `Sim.until`, bounded in real time (a liveness bound, not a timing
assertion).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import ClientSession

from edge_agent.agent import Agent
from edge_agent.config.settings import DeviceConfig, MqttSettings, TelemetrySettings, UpdateSettings
from edge_agent.server import ServerConfig
from tests.protocol.factory import DEVICE, NOW
from tests.support.disk import SmallDisk, small_disk
from tests.support.probation_models import FEATURES
from tests.support.sim_broker import SimBroker
from tests.support.sim_repository import Shipped, SimRepository

LIVENESS_S = 60.0  # real seconds `until` waits before it calls the agent stuck
POLL_S = 0.002


class SimClock:
    """Monotonic seconds and UTC time that move only when `advance` is called."""

    def __init__(self, start: datetime = NOW) -> None:
        self.elapsed = 0.0
        self._start = start

    def monotonic(self) -> float:
        """Seconds since an arbitrary origin, like time.monotonic."""
        return 1000.0 + self.elapsed

    def utc(self) -> datetime:
        """The current time, for expiry checks."""
        return self._start + timedelta(seconds=self.elapsed)

    def advance(self, seconds: float) -> None:
        """Move both clocks forward."""
        self.elapsed += seconds


class SimLoop(asyncio.SelectorEventLoop):
    """An event loop whose timers (sleep, wait_for, timeout) follow a `SimClock`."""

    def __init__(self, clock: SimClock) -> None:
        super().__init__()
        self._sim_clock = clock

    def time(self) -> float:
        """The simulated time: call_later and friends schedule against it."""
        return self._sim_clock.monotonic()


class HoldableThreads(ThreadPoolExecutor):
    """The loop's default executor (asyncio.to_thread): `hold` makes later work wait.

    A step whose deadline runs while its work is in a thread (loading a model) is held there,
    the clock advanced past the deadline, and the threads let go: the deadline fires first.
    """

    def __init__(self) -> None:
        super().__init__(max_workers=8, thread_name_prefix="sim")
        self._open = threading.Event()
        self._open.set()
        self.held = 0  # work items submitted while held

    def hold(self) -> None:
        """Make work submitted from now on wait for `let_go`."""
        self._open.clear()

    def let_go(self) -> None:
        """Run everything held, and everything submitted later at once."""
        self._open.set()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        """Run `fn` in a thread, once the executor is not held."""
        if self._open.is_set():
            return super().submit(fn, *args, **kwargs)
        self.held += 1

        def held() -> Any:
            self._open.wait()
            return fn(*args, **kwargs)

        return super().submit(held)


@dataclass
class Sim:
    """One device (a real Agent) and its registry (a SimRepository) on a SimBroker."""

    root: Path
    settings: UpdateSettings
    clock: SimClock
    disk: SmallDisk | None = None  # the state directory's own small file system, if any
    follow: tuple[str, ...] = ()  # the models the device follows (all when empty)
    broker: SimBroker = field(default_factory=SimBroker)
    repo: SimRepository = field(init=False)
    agent: Agent | None = None
    starts: int = 0
    _run: asyncio.Task[Any] | None = None
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _http: ClientSession | None = None
    _ticker: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(1))
    threads: HoldableThreads = field(default_factory=HoldableThreads)

    def __post_init__(self) -> None:
        self.repo = SimRepository(self.broker)
        (self.root / "root.json").write_bytes(self.repo.root_bytes())

    @property
    def state_dir(self) -> Path:
        """The agent's state directory."""
        return self.root / "state"

    def config(self) -> DeviceConfig:
        """The device's configuration, as `load_config` would make it."""
        return DeviceConfig(
            source=self.root / "device.toml", device_id=DEVICE, state_dir=self.state_dir,
            root_file=self.root / "root.json", updates=self.settings, follow=self.follow,
            mqtt=MqttSettings(url="mqtt://broker.invalid", username=DEVICE),
            server=ServerConfig(port=0), telemetry=TelemetrySettings(interval_s=3600),
        )  # fmt: skip

    # --- the agent's life ---------------------------------------------------------------------

    async def start(self) -> None:
        """Start `edge-agent run` in process; return once it serves."""
        agent = Agent(
            self.config(), follow_broker=self.broker.follow,
            monotonic=self.clock.monotonic, now=self.clock.utc,
        )  # fmt: skip
        self.agent, self._stop, self.starts = agent, asyncio.Event(), self.starts + 1
        serving = asyncio.Event()
        self._run = asyncio.create_task(agent.run(self._stop, on_serving=serving.set))
        await self.until(lambda: serving.is_set() or self._run_done(), "the agent serving")
        if self._run.done():
            self._run.result()
            raise AssertionError("the agent ended before it served")

    async def stop(self) -> None:
        """SIGTERM: the clean stop."""
        self._stop.set()
        await self._ended()

    async def crash(self) -> None:
        """An end the agent did not choose (kill -9 as far as state.json can tell)."""
        if self._run is not None:
            self._run.cancel()
        await self._ended()

    async def restart(self, *, clean: bool) -> None:
        """Stop (cleanly or not) and start again over the same state directory."""
        await (self.stop() if clean else self.crash())
        self.broker.restore(session_present=False)
        await self.start()

    async def close(self) -> None:
        """Stop whatever still runs."""
        if self._run is not None and not self._run.done():
            await self.stop()
        if self._http is not None:
            await self._http.close()
        self.threads.let_go()
        self._ticker.shutdown(wait=False)

    def _run_done(self) -> bool:
        return self._run is not None and self._run.done()

    async def _ended(self) -> None:
        if self._run is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._run
        if self.broker.connection is not None:
            self.broker.connection.lost = True
        self._run = None

    # --- the link ---------------------------------------------------------------------------

    async def drop_link(self) -> None:
        """Cut the broker link and wait until the agent noticed (its connected clock stops)."""
        self.broker.drop()
        await self.until(lambda: not self.live.link.up, "the agent seeing the link down")

    async def restore_link(self, *, session_present: bool = False) -> None:
        """Let the agent reconnect; wait until it subscribed and handled what that brought."""
        self.broker.restore(session_present=session_present)
        await self.until(
            lambda: self.live.link.up and self.broker.idle(), "the agent connected again"
        )

    # --- time ---------------------------------------------------------------------------------

    async def advance(self, seconds: float) -> None:
        """Move the clock; the timers due meanwhile fire now."""
        self.clock.advance(seconds)
        for _ in range(3):
            await asyncio.sleep(0)

    async def until(self, predicate: Callable[[], bool], what: str) -> None:
        """Wait (real time, bounded) until `predicate()` holds; the clock does not move."""
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + LIVENESS_S
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"never happened: {what}\nevents: {self.events()}")
            await loop.run_in_executor(self._ticker, time.sleep, POLL_S)

    # --- what the device shows ----------------------------------------------------------------

    @property
    def live(self) -> Agent:
        """The running agent."""
        assert self.agent is not None
        return self.agent

    def events(self, kind: str | None = None, version: int | None = None) -> list[dict[str, Any]]:
        """Events the device sent (of one kind, about one version), oldest first.

        Each once, as the registry stores them: what the spool sent but had not yet seen
        acknowledged when the agent was killed comes again under the same msg_epoch and
        msg_seq (docs/telemetry.md).
        """
        seen: set[tuple[Any, Any]] = set()
        unique = []
        for e in self.broker.messages(self.repo.topics.events(DEVICE)):
            key = (e.get("msg_epoch"), e.get("msg_seq"))
            if key[1] is None or key not in seen:
                seen.add(key)
                unique.append(e)
        return [
            e
            for e in unique
            if (kind is None or e["event"] == kind)
            and (version is None or e.get("version") == version)
        ]

    async def event(self, kind: str, version: int | None = None) -> dict[str, Any]:
        """Wait for an event of `kind` (about `version`) and return the latest such."""
        await self.until(lambda: bool(self.events(kind, version)), f"a {kind} event v{version}")
        return self.events(kind, version)[-1]

    def serving(self, model: str) -> int | None:
        """The version `model` is served at, or None."""
        repository = self.live.repository
        return repository.get(model).version if model in repository else None

    def phase(self, model: str) -> str:
        """The model's update phase."""
        return self.live.updater.phase(model)

    def on_disk(self, model: str) -> dict[str, Any]:
        """What state.json says of `model` now."""
        state = json.loads((self.state_dir / "state.json").read_text())
        return dict(state["models"].get(model, {}))

    def reported(self) -> dict[str, Any]:
        """The device's retained state message, as the registry last saw it."""
        state: dict[str, Any] = json.loads(self.broker.retained[self.repo.topics.state(DEVICE)])
        return state

    def on_disk_models(self) -> dict[str, Any]:
        """Every model state.json names."""
        models: dict[str, Any] = json.loads((self.state_dir / "state.json").read_text())["models"]
        return models

    def on_disk_seq(self) -> int:
        """The assignment seq state.json holds."""
        return int(json.loads((self.state_dir / "state.json").read_text())["assignment_seq"])

    def committed(self, model: str, version: int) -> bool:
        """Whether `version` serves, committed on disk, and the update is over."""
        on_disk = self.on_disk(model)
        active = (on_disk.get("active") or {}).get("version")
        settled = self.phase(model) == "idle" and not on_disk.get("in_probation")
        return settled and active == version and self.serving(model) == version

    def failed_here(self, model: str) -> dict[int, int]:
        """version -> the seq it failed at, as state.json records it."""
        return {f["version"]: f["seq"] for f in self.on_disk(model).get("failed", [])}

    async def install(self, shipped: Shipped, *, requests: int | None = None) -> None:
        """Assign `shipped`, answer its probation's requests, wait until it is committed."""
        model, version = shipped.release.model, shipped.version
        self.repo.assign(shipped)
        await self.until(lambda: self.in_probation(model, version), f"v{version} on probation")
        await self.infer(model, self.settings.probation_requests if requests is None else requests)
        await self.until(lambda: self.committed(model, version), f"v{version} committed")

    def in_probation(self, model: str, version: int) -> bool:
        """Whether `version` serves on probation."""
        return self.phase(model) == "probation" and self.serving(model) == version

    async def settled(self) -> None:
        """Wait until the broker double has nothing left for the agent to handle."""
        await self.until(self.broker.idle, "every message handled")

    # --- a local application ------------------------------------------------------------------

    async def infer(self, model: str, count: int = 1, *, seed: int = 0) -> list[int]:
        """Send `count` one-row requests (positive values) to the endpoint; their statuses."""
        if self._http is None:
            self._http = ClientSession()
        rng = np.random.default_rng(seed)
        statuses = []
        for _ in range(count):
            row = np.abs(rng.normal(size=FEATURES)).astype(np.float32).tolist()
            body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, FEATURES],
                                "data": row}]}  # fmt: skip
            url = f"{self.live.server.url}/v2/models/{model}/infer"
            async with self._http.post(url, json=body) as response:
                await response.read()
                statuses.append(response.status)
        return statuses


Scenario = Callable[[Sim], Awaitable[None]]


def run_sim(
    root: Path,
    settings: UpdateSettings,
    scenario: Scenario,
    *,
    disk_bytes: int | None = None,
    follow: tuple[str, ...] = (),
) -> None:
    """Run `scenario` against a started device on a simulated clock, then stop the device.

    With `disk_bytes` the state directory is a tmpfs of that size (`Sim.disk`) to fill up.
    """
    clock = SimClock()

    async def main(disk: SmallDisk | None) -> None:
        sim = Sim(root, settings, clock, disk=disk, follow=follow)
        asyncio.get_running_loop().set_default_executor(sim.threads)
        await sim.start()
        try:
            await scenario(sim)
        finally:
            await sim.close()

    with contextlib.ExitStack() as stack:
        disk = None
        if disk_bytes is not None:
            disk = stack.enter_context(small_disk(root / "state", disk_bytes))
        runner = stack.enter_context(asyncio.Runner(loop_factory=lambda: SimLoop(clock)))
        runner.run(main(disk))
