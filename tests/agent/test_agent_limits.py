"""A real `edge-agent run` under slow and greedy local clients: its descriptors and its memory
(read from /proc) stay bounded, and it keeps answering the connections it serves."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from tests.support.agent import AgentProcess
from tests.support.broker import Broker
from tests.support.rawhttp import (
    HEALTH,
    PARTIAL_HEAD,
    RawConnection,
    RawResponse,
    answer,
    chunk,
    request,
)
from tests.support.registry import cli

MiB = 1024 * 1024
TOKEN = "limits-test-token-0123456789"  # noqa: S105 - a test token
AUTH = {"Authorization": f"Bearer {TOKEN}"}
INFER = "/v2/models/classifier/infer"

AgentFactory = Callable[[str], AgentProcess]


@pytest.fixture(scope="module")
def root_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trust root made by the registry's own `init`."""
    home = tmp_path_factory.mktemp("limits-registry") / "home"
    cli("init", "--home", str(home))
    return home / "root.json"


@pytest.fixture
def agents(tmp_path: Path, mosquitto_plain: Broker, root_file: Path) -> Iterator[AgentFactory]:
    """Agents whose [server] section is the given TOML; each with its own device id and state."""
    started: list[AgentProcess] = []

    def make(server_toml: str) -> AgentProcess:
        device = f"limits-{uuid.uuid4().hex[:12]}"
        (tmp_path / "server-token").write_text(TOKEN + "\n")
        config = tmp_path / f"{device}.toml"
        config.write_text(
            f'device_id = "{device}"\n[trust]\nroot_file = "{root_file}"\n'
            f'[mqtt]\nurl = "{mosquitto_plain.url}"\n[server]\n{server_toml}\n'
        )
        agent = AgentProcess(config, tmp_path / device)
        started.append(agent)
        return agent

    yield make
    for agent in started:
        agent.stop()


def rss_mib(pid: int) -> float:
    """The resident memory of process `pid`, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def open_descriptors(pid: int) -> int:
    """How many file descriptors process `pid` holds."""
    return len(os.listdir(f"/proc/{pid}/fd"))


@contextlib.asynccontextmanager
async def peak_rss(pid: int) -> AsyncIterator[list[float]]:
    """Sample the RSS of `pid` while the block runs; the list holds the highest seen."""
    peak = [rss_mib(pid)]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss_mib(pid))
            await asyncio.sleep(0.01)

    sampler = asyncio.create_task(sample())
    try:
        yield peak
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
        peak[0] = max(peak[0], rss_mib(pid))


async def until(probe: RawConnection, **expected: int) -> None:
    """Wait until the `server` part of /v1/status holds `expected`."""
    async with asyncio.timeout(120):
        while True:
            state = (await answer(probe, request("GET", "/v1/status", headers=AUTH))).json()
            if all(state["server"][key] == value for key, value in expected.items()):
                return
            await asyncio.sleep(0.05)


def pid_of(agent: AgentProcess) -> int:
    """The agent's process id."""
    assert agent.process is not None
    return agent.process.pid


async def test_partial_heads_cannot_exhaust_the_agents_descriptors(agents: AgentFactory) -> None:
    agent = agents("max_connections = 50\nheader_timeout_s = 10.0\nidle_timeout_s = 300.0")
    await asyncio.to_thread(agent.start)
    health = await RawConnection.open(agent.port)
    assert (await answer(health, HEALTH)).status == 200
    descriptors = open_descriptors(pid_of(agent))

    attack = []
    for _ in range(400):  # far past the cap (50) and the 8 more that get a 503
        connection = await RawConnection.open(agent.port)
        await connection.send(PARTIAL_HEAD)
        attack.append(connection)
    await until(health, connections=58)

    assert open_descriptors(pid_of(agent)) <= descriptors + 57 + 4
    assert (await answer(health, HEALTH)).status == 200
    assert (await answer(health, request("GET", "/v2"))).json()["name"] == "edge-agent"
    tensor = b'{"inputs": [{"name": "X", "datatype": "FP32", "shape": [1], "data": [1]}]}'
    unknown = await answer(health, request("POST", INFER, tensor))
    assert unknown.status == 404, unknown  # inference answers: the agent serves no model yet

    endings = await asyncio.gather(*(connection.closed() for connection in attack))
    timed_out = [e for e in endings if e.startswith(b"HTTP/1.1 408")]
    assert len(timed_out) == 57  # the 49 served and the 8 refused waited for their heads
    assert endings.count(b"") == 400 - 57  # the rest were closed at once
    assert b"request head did not arrive within 10 s" in timed_out[0]
    await until(health, connections=1)
    assert (await answer(await RawConnection.open(agent.port), HEALTH)).status == 200


async def upload_stopping_short(port: int, *, chunked: bool) -> RawResponse | None:
    """An authorized 8 MiB upload that stops 1 KiB before its end; the answer it gets."""
    connection = await RawConnection.open(port)
    framing = {"Transfer-Encoding": "chunked"} if chunked else {"Content-Length": str(8 * MiB)}
    await connection.send(request("POST", INFER, b"", {**AUTH, **framing}))
    reading = asyncio.create_task(connection.response())  # an early answer is read at once
    piece = b" " * (256 * 1024)
    with contextlib.suppress(ConnectionError):  # refused early: the agent stops reading
        for sent in range(0, 8 * MiB - 1024, len(piece)):
            part = piece[: 8 * MiB - 1024 - sent]
            await connection.send(chunk(part) if chunked else part)
    reply = await reading
    await connection.closed()
    return reply


def warm_up_body() -> bytes:
    """A complete body of the largest size, so the baseline includes what one costs."""
    return b'{"inputs": [' + b" " * (8 * MiB - 14) + b"]}"


async def test_slow_uploads_are_bounded_by_the_body_budget(agents: AgentFactory) -> None:
    agent = agents(
        'token_file = "server-token"\nmax_buffered_body_mb = 16\nbody_timeout_s = 5.0\n'
        "idle_timeout_s = 300.0"
    )
    await asyncio.to_thread(agent.start)
    probe = await RawConnection.open(agent.port)
    for _ in range(3):
        assert (await answer(probe, request("POST", INFER, warm_up_body(), AUTH))).status == 400
    await until(probe, buffered_body_bytes=0)
    baseline = rss_mib(pid_of(agent))

    async with peak_rss(pid_of(agent)) as peak:
        uploads = [upload_stopping_short(agent.port, chunked=n % 2 == 1) for n in range(48)]
        replies = await asyncio.gather(*uploads)

    statuses = sorted(reply.status for reply in replies if reply is not None)
    assert set(statuses) == {408, 503}, statuses  # some held until the deadline, most refused
    for reply in replies:
        assert reply is not None
        assert set(reply.json()) == {"error"}
        if reply.status == 503:
            assert reply.headers["retry-after"] == "1"
            assert "server.max_buffered_body_mb" in reply.json()["error"]
    # Without the budget the uploads held 48 x 8 MiB = 384 MiB.
    assert peak[0] - baseline < 16 + 48, (baseline, peak[0])
    await until(probe, buffered_body_bytes=0, connections=1)
    assert rss_mib(pid_of(agent)) - baseline < 16, (baseline, rss_mib(pid_of(agent)))


def gzip_bomb(expanded: int) -> bytes:
    """A gzip stream of `expanded` zero bytes (about a thousandth of that), made in pieces."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MiB)
    return b"".join(compressor.compress(zeros) for _ in range(expanded // MiB)) + compressor.flush()


async def test_a_gzip_bomb_gets_413_without_being_expanded(agents: AgentFactory) -> None:
    agent = agents('token_file = "server-token"\nidle_timeout_s = 300.0')
    await asyncio.to_thread(agent.start)
    probe = await RawConnection.open(agent.port)
    for _ in range(3):
        assert (await answer(probe, request("POST", INFER, warm_up_body(), AUTH))).status == 400
    baseline = rss_mib(pid_of(agent))
    bomb = gzip_bomb(256 * MiB)
    headers = {**AUTH, "Content-Encoding": "gzip", "Content-Type": "application/json"}

    async with peak_rss(pid_of(agent)) as peak:
        connections = [await RawConnection.open(agent.port) for _ in range(3)]
        replies = await asyncio.gather(
            *(answer(c, request("POST", INFER, bomb, headers)) for c in connections)
        )

    for reply in replies:
        assert reply.status == 413, reply
        assert "exceeds the limit of 8388608 bytes" in reply.json()["error"]
    assert peak[0] - baseline < 48, (baseline, peak[0])  # 768 MiB if they were expanded
