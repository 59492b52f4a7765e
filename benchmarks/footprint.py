"""Section 3: the real agent's memory and cold start, next to the import floor measured alongside.

The agent is `edge-agent run` with a registry and mosquitto, serving the small int8 model it
received as an update. Memory is RSS and PSS from /proc/PID/smaps_rollup: idle, after N
requests, after each of M model swaps (deploys alternating two versions), and after restarts.
Cold start is process start until /v2/health/ready answers 200 (the model is in the store).
The import floor is a bare Python process importing what the agent needs and loading the same
model with the same onnxruntime options.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import onnx

from benchmarks.common import PYTHON, WORK, http_status, log, median, memory
from benchmarks.harness import Agent, Deployment
from benchmarks.models import Model, model
from benchmarks.propagation import wait_all

MODEL = "small"
GROUP = "footprint"
FLOOR = """
import sys, time
import numpy, onnxruntime, aiohttp, paho.mqtt.client, cryptography
import cryptography.hazmat.primitives.asymmetric.ed25519
options = onnxruntime.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
session = onnxruntime.InferenceSession(sys.argv[1], sess_options=options,
                                       providers=["CPUExecutionProvider"])
feed = {session.get_inputs()[0].name: numpy.zeros((1, 32), dtype=numpy.float32)}
session.run(None, feed)
print("ready", flush=True)
time.sleep(120)
"""


@dataclass(frozen=True)
class Settings:
    """How much load, how many swaps and restarts."""

    requests: int
    concurrency: int
    swaps: int
    restarts: int


QUICK = Settings(requests=2000, concurrency=8, swaps=5, restarts=2)
FULL = Settings(requests=10_000, concurrency=8, swaps=20, restarts=5)


def variant(path: Path, out: Path, tag: str) -> Path:
    """The same model with another doc string: another sha256, same graph and size."""
    proto = onnx.load(str(path))
    proto.doc_string = f"benchmark variant {tag}"
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    return out


async def _load(
    url: str, body: bytes, count: int, concurrency: int, limit_s: float
) -> dict[str, int]:
    statuses: dict[str, int] = {}
    deadline = time.monotonic() + limit_s
    remaining = count
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=concurrency),
        headers={"Content-Type": "application/json"},
    ) as session:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0 and time.monotonic() < deadline:
                remaining -= 1
                async with session.post(url, data=body) as response:
                    await response.read()
                    key = str(response.status)
                    statuses[key] = statuses.get(key, 0) + 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return statuses


def _floor(model_path: Path) -> dict[str, Any]:
    began = time.monotonic()
    process = subprocess.Popen(
        [PYTHON, "-c", FLOOR, str(model_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None  # noqa: S101 - PIPE
        line = process.stdout.readline()
        ready_s = time.monotonic() - began
        if line.strip() != "ready":
            raise RuntimeError("the import-floor process did not start")
        time.sleep(1.0)
        return {"ready_s": round(ready_s, 3), **memory(process.pid).to_dict()}
    finally:
        process.kill()
        process.wait()


def _cold_start(agent: Agent) -> float:
    agent.stop()
    began = time.monotonic()
    agent.start()
    deadline = began + 60
    while time.monotonic() < deadline:
        if agent.process is not None and agent.process.poll() is not None:
            raise RuntimeError(f"the agent exited: {agent.log_file.read_text()[-2000:]}")
        if http_status(f"{agent.url}/v2/health/ready", timeout=1) == 200:
            return time.monotonic() - began
        time.sleep(0.005)
    raise RuntimeError("the agent did not become ready after a restart")


def _request_body(small: Model) -> bytes:
    row = [round(float(v), 6) for v in small.X_eval[0]]
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 32], "data": row}
    return json.dumps({"inputs": [tensor]}).encode()


def _floor_median(model_path: Path) -> dict[str, Any]:
    floors = [_floor(model_path) for _ in range(3)]
    return {
        "ready_s": round(median([f["ready_s"] for f in floors]), 3),
        "rss_mib": round(median([f["rss_mib"] for f in floors]), 1),
        "pss_mib": round(median([f["pss_mib"] for f in floors]), 1),
        "runs": floors,
    }


def _swaps(
    deployment: Deployment, agent: Agent, versions: list[int], settings: Settings, body: bytes
) -> list[dict[str, float]]:
    """Deploy the two versions in turn; memory after each swap (and 200 requests on it)."""
    assert agent.process is not None  # noqa: S101 - started
    url = f"{agent.url}/v2/models/{MODEL}/infer"
    series = []
    for index in range(settings.swaps):
        version = versions[(index + 1) % 2]
        started, _ = deployment.deploy(MODEL, version, GROUP)
        if not wait_all([agent], version, started, 60, MODEL):
            raise RuntimeError(f"swap {index} to v{version} did not happen")
        asyncio.run(_load(url, body, 200, 4, 30))
        series.append(memory(agent.process.pid).to_dict())
    return series


def _measure(
    deployment: Deployment, agent: Agent, versions: list[int], settings: Settings, small: Model
) -> dict[str, Any]:
    body = _request_body(small)
    assert agent.process is not None  # noqa: S101 - started
    pid = agent.process.pid
    idle = memory(pid)
    log(f"footprint: idle {idle}")
    url = f"{agent.url}/v2/models/{MODEL}/infer"
    statuses = asyncio.run(_load(url, body, settings.requests, settings.concurrency, 120))
    time.sleep(1.0)
    loaded = memory(pid)
    log(f"footprint: after {settings.requests} requests {loaded} {statuses}")
    series = _swaps(deployment, agent, versions, settings, body)
    time.sleep(1.0)
    swapped = memory(pid)
    log(f"footprint: after {settings.swaps} swaps {swapped}")
    cold = [_cold_start(agent) for _ in range(settings.restarts)]
    time.sleep(2.0)
    restarted = memory(agent.process.pid)
    floor = _floor_median(small.path)
    log(f"footprint: cold start {cold}, import floor {floor}")
    first_to_last = series[-1]["rss_mib"] / series[0]["rss_mib"] - 1 if series else 0.0
    return {
        "idle": idle.to_dict(),
        "after_requests": {**loaded.to_dict(), "statuses": statuses},
        "after_swaps": swapped.to_dict(),
        "swap_series": series,
        "after_restart_idle": restarted.to_dict(),
        "cold_start_s": [round(c, 3) for c in cold],
        "cold_start_s_median": round(median(cold), 3),
        "import_floor": floor,
        "steady_rss_over_floor": round(max(loaded.rss_mib, swapped.rss_mib) / floor["rss_mib"], 3),
        "steady_pss_over_floor": round(max(loaded.pss_mib, swapped.pss_mib) / floor["pss_mib"], 3),
        "swap_growth": round(swapped.rss_mib / loaded.rss_mib - 1, 4),
        "swap_growth_first_to_last": round(first_to_last, 4),
    }


def run(mode: str) -> dict[str, Any]:
    """Measure; return the results document."""
    settings = QUICK if mode == "quick" else FULL
    small = model("small")
    files = [variant(small.path, WORK / "footprint-models" / f"v{i}.onnx", str(i)) for i in (1, 2)]
    deployment = Deployment(WORK / "footprint")
    deployment.start()
    agent: Agent | None = None
    out: dict[str, Any] = {"section": "footprint", "mode": mode, "settings": settings.__dict__}
    try:
        versions = [deployment.push(path, MODEL) for path in files]
        bundles = deployment.provision(["fp-0"], GROUP)
        agent = Agent("fp-0", bundles["fp-0"])
        agent.start()
        agent.wait_live()
        started, _ = deployment.deploy(MODEL, versions[0], GROUP)
        wait_all([agent], versions[0], started, 60, MODEL)
        time.sleep(2.0)
        out.update(_measure(deployment, agent, versions, settings, small))
    finally:
        if agent is not None:
            agent.stop()
        deployment.stop()
    return out


if __name__ == "__main__":
    import sys

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=2))
