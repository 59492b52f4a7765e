"""The update state machine when the state directory refuses writes (a full disk).

Real parts throughout: the updater, activator, stores and onnxruntime on a small tmpfs that
the test fills at one step of an update, real signed documents, and a spool (on the ordinary
disk) the events are read back from. The only stand-in is the transport: chunks are handed to
the download straight from the model's bytes.

Each case fills the disk at one step and checks the rule of docs/agent.md for it: the event
and reason the step ends with, which model serves meanwhile, and what the state directory holds
once the space is back, without restarting anything.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config.settings import DeviceConfig, MqttSettings, UpdateSettings
from edge_agent.metrics import AgentMetrics
from edge_agent.runtime import LoadedModel, ModelRepository, RuntimeOptions
from edge_agent.storage.state import StateStore
from edge_agent.storage.store import ModelStore, PartialDownload
from edge_agent.update.activation import Activator
from edge_agent.update.updater import Updater
from edge_agent.uplink.reporting import Reporter
from edge_agent.uplink.spool import Spool
from edge_protocol import Artifact, Release, Topics, TrustedState
from model_registry.build.pipeline import build
from tests.agent.conftest import eventually
from tests.protocol.factory import DEVICE, NOW, FrozenClock, Registry
from tests.support.disk import SmallDisk, small_disk
from tests.support.models import build_classifier

MODEL = "iris"  # the factory's model name
CHUNK = 4096
DISK_BYTES = 4 * 1024 * 1024
SETTINGS = UpdateSettings(
    release_timeout_s=30, download_timeout_s=30, activation_timeout_s=60,
    probation_requests=2, probation_s=3600, write_retry_min_s=0.05, write_retry_max_s=0.2,
)  # fmt: skip


@dataclass(frozen=True)
class Built:
    """One model version: its file, release and signed release."""

    data: bytes
    release: Release
    signed: bytes


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry()


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory, registry: Registry) -> dict[int, Built]:
    """Versions 1 to 3 of one classifier, built and signed as the registry would."""
    root = tmp_path_factory.mktemp("versions")
    built = {}
    for version, samples in ((1, 600), (2, 450), (3, 520)):
        source = build_classifier(root / f"v{version}.onnx", n_samples=samples)
        # 32 self-test rows: a signed release of about 8 KB, more than the page that deleting
        # the finished download's bitmap gives back to a full disk.
        result = build(source.onnx_path.read_bytes(), selftest_rows=32)
        release = registry.release(
            version, artifact=Artifact.describe(result.artifact, CHUNK),
            io=result.io, selftest=result.selftest,
        )  # fmt: skip
        built[version] = Built(result.artifact, release, registry.release_bytes(release))
    return built


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """The state directory: a small tmpfs."""
    with small_disk(tmp_path / "disk", DISK_BYTES) as mounted:
        yield mounted


class DirectFetcher:
    """The transport: writes the missing chunks from the model's bytes, with a hook after each."""

    def __init__(self, versions: dict[int, Built]) -> None:
        self._by_sha = {b.release.artifact.sha256: b.data for b in versions.values()}
        self.after_chunk: Callable[[int], None] = lambda index: None

    async def fetch(self, download: PartialDownload, progress: Any = None) -> int:
        data, size = self._by_sha[download.artifact.sha256], download.artifact.chunk_size
        written = 0
        for index in download.missing():
            chunk = data[index * size : (index + 1) * size]
            written += await asyncio.to_thread(download.write_chunk, index, chunk)
            self.after_chunk(index)
        return written


@dataclass
class Rig:
    """An updater on a small disk, as `edge-agent run` assembles it."""

    small: SmallDisk
    spool: Spool
    registry: Registry
    versions: dict[int, Built]
    updater: Updater
    repository: ModelRepository
    metrics: AgentMetrics
    trust: TrustedState
    fetcher: DirectFetcher
    seq: int = 0
    on_swap: list[Callable[[int], None]] = field(default_factory=list)

    @property
    def disk(self) -> Path:
        """The state directory."""
        return self.small.path

    def fill(self) -> None:
        self.small.fill()

    def free(self) -> None:
        self.small.free()

    async def assign(self, version: int) -> None:
        """A new signed assignment of `version`, verified and accepted as the dispatcher does."""
        self.seq += 1
        document = self.registry.assignment(self.seq, self.versions[version].release)
        assignment = self.trust.verify_assignment(self.registry.assignment_bytes(document))
        await self.updater.accept(assignment)

    def answer(self, version: int, status: int = 200) -> None:
        """The local endpoint answered a request with `version` (what probation watches)."""
        self.metrics.observe_request(
            model=MODEL, version=str(version), status=status, endpoint="infer", seconds=0.001
        )

    def serving(self) -> int | None:
        return self.repository.get(MODEL).version if MODEL in self.repository else None

    def phase(self) -> str:
        return self.updater.phase(MODEL)

    def events(self) -> list[dict[str, Any]]:
        records = self.spool.take(10_000)
        self.spool.release(r.seq for r in records)
        return [json.loads(r.payload) for r in records if r.kind == "events"]

    def on_disk(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads((self.disk / "state.json").read_text())
        return state

    async def probation_passes(self, version: int) -> None:
        await eventually(lambda: self.phase() == "probation", f"v{version} on probation")
        for _ in range(SETTINGS.probation_requests):
            self.answer(version)

    async def install(self, version: int) -> None:
        await self.assign(version)
        await self.probation_passes(version)
        await eventually(lambda: self.phase() == "idle", f"v{version} committed")


@pytest.fixture
async def rig(
    disk: SmallDisk, tmp_path: Path, registry: Registry, versions: dict[int, Built]
) -> AsyncIterator[Rig]:
    repository, metrics = ModelRepository(), AgentMetrics()
    states, store = StateStore(disk.path), ModelStore(disk.path)
    spool = Spool(tmp_path / "spool", 1 << 20)
    trust = TrustedState(registry.root_bytes(), device_id=DEVICE, clock=FrozenClock(NOW))
    config = DeviceConfig(
        source=tmp_path / "device.toml", device_id=DEVICE, state_dir=disk.path,
        root_file=tmp_path / "root.json", updates=SETTINGS,
        mqtt=MqttSettings(url="mqtt://localhost", username=DEVICE),
    )  # fmt: skip
    activator = Activator(repository, metrics, options=RuntimeOptions(), store=store,
                          states=states, settings=SETTINGS)  # fmt: skip
    reporter = Reporter(DEVICE, Topics(), lambda: ({}, {}), spool)
    fetcher = DirectFetcher(versions)
    releases = {Topics().release(MODEL, v): b.signed for v, b in versions.items()}
    updater: Updater

    async def subscribe(topic: str) -> None:
        if topic in releases:  # retained: the release arrives right after the subscription
            version = int(topic.rsplit("/", 1)[1])
            asyncio.get_running_loop().call_soon(
                updater.on_release, MODEL, version, releases[topic]
            )

    updater = Updater(config, trust, states=states, store=store, activator=activator,
                      reporter=reporter, fetcher=fetcher, subscribe=subscribe)  # fmt: skip
    rig = Rig(disk, spool, registry, versions, updater, repository, metrics, trust, fetcher)

    def swapped(name: str, old: LoadedModel | None, new: LoadedModel | None) -> None:
        for hook in rig.on_swap:
            hook(new.version if new is not None else 0)

    repository.add_listener(swapped)
    await updater.serve_installed()
    await rig.install(1)
    yield rig
    await updater.close()
    repository.close()


def _last(rig: Rig, *kinds: str) -> dict[str, Any]:
    events = [e for e in rig.events() if e["event"] in kinds]
    assert events, f"no {kinds} event in {rig.events()}"
    return events[-1]


async def _ended(rig: Rig, kind: str, version: int) -> dict[str, Any]:
    def ended() -> bool:
        return any(e["event"] == kind and e.get("version") == version for e in rig.events())

    await eventually(ended, f"a {kind} event about v{version}")
    return _last(rig, kind)


def _persisted(rig: Rig) -> dict[str, Any]:
    model: dict[str, Any] = rig.on_disk()["models"][MODEL]
    return model


# --- one case per step ------------------------------------------------------------------------


async def test_an_assignment_that_cannot_be_recorded_waits_and_applies_once_space_is_back(
    rig: Rig,
) -> None:
    rig.fill()
    await rig.assign(2)
    assert (await _ended(rig, "failed", 2))["reason"] == "disk_full"
    assert rig.serving() == 1
    await eventually(lambda: rig.phase() == "failed", "phase failed")
    assert rig.on_disk()["assignment_seq"] == 1, "not recorded, so not acted on"
    await rig.assign(3)  # the next one replaces the one waiting
    assert (await _ended(rig, "failed", 3))["reason"] == "disk_full"
    rig.free()
    await rig.probation_passes(3)
    await eventually(lambda: rig.phase() == "idle", "v3 committed")
    assert rig.on_disk()["assignment_seq"] == 3
    assert _persisted(rig)["active"]["version"] == 3


async def test_a_download_that_hits_a_full_disk_fails_and_a_newer_assignment_retries(
    rig: Rig,
) -> None:
    rig.fetcher.after_chunk = lambda index: rig.fill() if index == 0 else None
    await rig.assign(2)
    assert (await _ended(rig, "failed", 2))["reason"] == "disk_full"
    assert rig.serving() == 1
    parts = rig.disk / "downloads"
    await eventually(lambda: not list(parts.glob("*.part")), "the failed download removed")
    rig.free()
    await eventually(lambda: 2 in {f["version"] for f in _persisted(rig)["failed"]}, "recorded")
    rig.fetcher.after_chunk = lambda index: None
    await rig.assign(2)  # the same release under a newer assignment is tried again
    await rig.probation_passes(2)
    await eventually(lambda: rig.phase() == "idle", "v2 committed")
    assert rig.serving() == 2


async def test_a_release_that_cannot_be_kept_is_not_swapped_in(rig: Rig) -> None:
    last = len(rig.versions[2].release.artifact.chunks) - 1
    rig.fetcher.after_chunk = lambda index: rig.fill() if index == last else None
    await rig.assign(2)
    assert (await _ended(rig, "failed", 2))["reason"] == "disk_full"
    assert rig.serving() == 1
    assert not list(
        (rig.disk / "releases").glob(f"{MODEL}-{rig.versions[2].release.artifact.sha256}*")
    )
    rig.free()
    await eventually(lambda: rig.updater.pending_writes == [], "the failure recorded")
    assert _persisted(rig)["active"]["version"] == 1


async def test_a_probation_that_cannot_be_recorded_rolls_back(rig: Rig) -> None:
    rig.on_swap.append(lambda version: rig.fill() if version == 2 else None)
    await rig.assign(2)
    rolled_back = await _ended(rig, "rolled_back", 2)
    assert (rolled_back["reason"], rolled_back["to_version"]) == ("disk_full", 1)
    assert rig.serving() == 1
    await eventually(lambda: rig.phase() == "idle", "phase idle")
    rig.free()
    await eventually(lambda: rig.updater.pending_writes == [], "the rollback recorded")
    persisted = _persisted(rig)
    assert (persisted["active"]["version"], persisted["in_probation"]) == (1, False)
    assert [f["version"] for f in persisted["failed"]] == [2]


async def test_a_commit_that_cannot_be_written_is_reported_and_retried(rig: Rig) -> None:
    await rig.assign(2)
    await eventually(lambda: rig.phase() == "probation", "v2 on probation")
    rig.fill()
    for _ in range(SETTINGS.probation_requests):
        rig.answer(2)
    failed = await _ended(rig, "failed", 2)
    assert failed["reason"] == "disk_full"
    assert rig.serving() == 2, "it passed probation: it keeps serving"
    await eventually(lambda: rig.phase() == "failed", "phase failed")
    assert _persisted(rig)["in_probation"] is True, "a restart now would probate it again"
    rig.free()
    await eventually(lambda: rig.phase() == "idle", "the commit landed")
    persisted = _persisted(rig)
    assert (persisted["active"]["version"], persisted["in_probation"]) == (2, False)
    assert persisted["previous"]["version"] == 1


async def test_a_rollback_that_cannot_be_written_still_serves_the_previous_model(
    rig: Rig,
) -> None:
    await rig.assign(2)
    await eventually(lambda: rig.phase() == "probation", "v2 on probation")
    rig.fill()
    for _ in range(SETTINGS.probation_requests):
        rig.answer(2, status=500)
    rolled_back = await _ended(rig, "rolled_back", 2)
    assert rolled_back["reason"] == "probation_failed"
    assert rig.serving() == 1
    await eventually(lambda: rig.phase() == "idle", "phase idle")
    rig.free()
    await eventually(lambda: rig.updater.pending_writes == [], "the rollback recorded")
    persisted = _persisted(rig)
    assert (persisted["active"]["version"], persisted["in_probation"]) == (1, False)


def test_the_retry_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="write_retry_min_s"):
        UpdateSettings(write_retry_min_s=5, write_retry_max_s=1)
    with pytest.raises(ValueError, match="write_retry_min_s"):
        UpdateSettings(write_retry_min_s=0)
