"""Section 2a: update propagation to real agents (registry + mosquitto + N `edge-agent run`).

For each chunk size and transport, a new ~4 MiB release is deployed to the group, and the time
from the deploy command returning until each agent serves the new version (its
`/v2/models/{m}` metadata) is recorded. Every run ships a new artifact, so every agent
downloads, verifies, loads, warms up, self-tests and swaps. Each agent reaches the broker and
the registry through relays of its own (`benchmarks.wire`), which count the bytes sent to it:
the cost of one update on a metered link, against the model's own size.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from benchmarks.common import WORK, log, median, percentile
from benchmarks.harness import Agent, Deployment, set_transport
from benchmarks.models import update_model_file
from benchmarks.wire import WireMeter

MODEL = "upd"
GROUP = "fleet"
POLL_S = 0.05


@dataclass(frozen=True)
class Settings:
    """Fleet size, configurations and repetitions."""

    agents: int
    configs: tuple[tuple[str, int], ...]  # (transport, chunk KiB), in the order they run
    runs: int
    timeout_s: float = 120.0


QUICK = Settings(agents=5, configs=(("mqtt", 256), ("http", 256)), runs=1)
FULL = Settings(
    agents=20,
    configs=(
        ("mqtt", 64),
        ("mqtt", 256),
        ("mqtt", 1024),
        ("http", 1024),
        ("http", 256),
        ("http", 64),
    ),
    runs=3,
)


async def _serving_version(session: aiohttp.ClientSession, agent: Agent, model: str) -> int | None:
    try:
        async with session.get(f"{agent.url}/v2/models/{model}") as response:
            if response.status != 200:
                return None
            return int((await response.json())["versions"][0])
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
        return None


async def _watch(
    agents: list[Agent], model: str, version: int, since: float, limit_s: float
) -> dict[str, float]:
    """Seconds after `since` (time.time()) at which each agent first served `version`."""
    # `since` is the deploy command's start; the agents are polled every POLL_S.
    seen: dict[str, float] = {}
    deadline = time.monotonic() + limit_s
    timeout_cfg = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout_cfg) as session:

        async def one(agent: Agent) -> None:
            while time.monotonic() < deadline:
                if await _serving_version(session, agent, model) == version:
                    seen[agent.device_id] = time.time() - since
                    return
                await asyncio.sleep(POLL_S)

        await asyncio.gather(*(one(agent) for agent in agents))
    return seen


def wait_all(
    agents: list[Agent], version: int, since: float, timeout: float, model: str = MODEL
) -> dict[str, float]:
    """Blocking wrapper of _watch."""
    return asyncio.run(_watch(agents, model, version, since, timeout))


def run(mode: str, deployment: Deployment | None = None) -> dict[str, Any]:
    """Run every configuration; return the results document."""
    settings = QUICK if mode == "quick" else FULL
    own = deployment is None
    deployment = deployment or Deployment(WORK / "propagation", chunk_kib=settings.configs[0][1])
    if own:
        deployment.start()
    agents: list[Agent] = []
    seed = 100
    results: list[dict[str, Any]] = []
    meter = WireMeter(deployment.mqtt_port, deployment.api_port)
    try:
        ids = [f"agent-{i:02d}" for i in range(settings.agents)]
        bundles = deployment.provision(ids, GROUP)
        agents = [Agent(device_id, bundles[device_id]) for device_id in ids]
        for agent in agents:
            meter.attach(agent.device_id, agent.bundle / "device.toml")
        transport = settings.configs[0][0]
        _start_agents(agents, transport)
        # A first version, so that every measured run is an update from one model to another.
        baseline = deployment.push(update_model_file(seed), MODEL)
        _, returned = deployment.deploy(MODEL, baseline, GROUP)
        wait_all(agents, baseline, returned, settings.timeout_s)
        for config_transport, chunk in settings.configs:
            if chunk != deployment.chunk_kib:
                log(f"propagation: registry restarts with chunk_size_kib = {chunk}")
                deployment.restart_registry(chunk)
            if config_transport != transport:
                log(f"propagation: agents restart with transport = {config_transport}")
                for agent in agents:
                    agent.stop()
                transport = config_transport
                _start_agents(agents, transport)
            for run_index in range(settings.runs):
                seed += 1
                version = deployment.push(update_model_file(seed), MODEL)
                time.sleep(0.5)  # let the registry's publication of the release settle
                before = meter.received()
                started, returned = deployment.deploy(MODEL, version, GROUP)
                # Times count from the deploy command's start: with many devices the
                # registry publishes assignments while the command is still running.
                seen = wait_all(agents, version, started, settings.timeout_s)
                times = sorted(seen.values())
                wire = _wire(before, meter.received(), update_model_file(seed).stat().st_size)
                entry = {
                    "transport": transport,
                    "chunk_kib": chunk,
                    "run": run_index,
                    "version": version,
                    "deploy_command_s": round(returned - started, 3),
                    "agents": len(agents),
                    "updated": len(seen),
                    "all_s": round(max(times), 3) if len(seen) == len(agents) else None,
                    "all_after_return_s": (
                        round(max(times) - (returned - started), 3)
                        if len(seen) == len(agents)
                        else None
                    ),
                    "p50_s": round(percentile(times, 50), 3),
                    "first_s": round(min(times), 3) if times else None,
                    "per_agent_s": {k: round(v, 3) for k, v in sorted(seen.items())},
                    **wire,
                }
                results.append(entry)
                log(
                    f"propagation {transport:4} {chunk:5} KiB run {run_index}: "
                    f"{len(seen)}/{len(agents)} agents, all in {entry['all_s']} s "
                    f"(first {entry['first_s']} s, median {entry['p50_s']} s); "
                    f"{entry['wire_bytes_per_agent_median']} bytes to each agent "
                    f"({entry['wire_vs_model']}x the model)"
                )
    finally:
        for agent in agents:
            agent.stop()
        meter.close()
        if own:
            deployment.stop()
    return {
        "section": "propagation",
        "mode": mode,
        "settings": {
            "agents": settings.agents,
            "runs": settings.runs,
            "poll_interval_s": POLL_S,
            "model_bytes": update_model_file(seed).stat().st_size,
        },
        "runs": results,
        "summary": summarize(results),
    }


def _wire(before: dict[str, int], after: dict[str, int], model_bytes: int) -> dict[str, Any]:
    """Bytes sent to each agent during one update: median, max, and the median per model byte."""
    sent = sorted(after[device] - before.get(device, 0) for device in after)
    middle = median([float(b) for b in sent]) if sent else 0.0
    return {
        "wire_bytes_per_agent_median": round(middle),
        "wire_bytes_per_agent_max": max(sent) if sent else None,
        "wire_vs_model": round(middle / model_bytes, 3) if model_bytes else None,
    }


def _start_agents(agents: list[Agent], transport: str) -> None:
    for agent in agents:
        set_transport(agent.bundle / "device.toml", transport)
        agent.start()
    for agent in agents:
        agent.wait_live()


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over runs of the time until all agents served, per configuration."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for entry in results:
        groups.setdefault((entry["transport"], entry["chunk_kib"]), []).append(entry)
    out = []
    for (transport, chunk), entries in groups.items():
        complete = [e["all_s"] for e in entries if e["all_s"] is not None]
        after = [e["all_after_return_s"] for e in entries if e["all_after_return_s"] is not None]
        pooled = [t for e in entries for t in e["per_agent_s"].values()]
        out.append({
            "transport": transport,
            "chunk_kib": chunk,
            "runs": len(entries),
            "complete_runs": len(complete),
            "all_s_median": round(median(complete), 3) if complete else None,
            "all_s_runs": [e["all_s"] for e in entries],
            "all_after_return_s_median": round(median(after), 3) if after else None,
            "deploy_command_s_median": round(median([e["deploy_command_s"] for e in entries]), 3),
            "per_agent_p10_s": round(percentile(pooled, 10), 3),
            "per_agent_p50_s": round(percentile(pooled, 50), 3),
            "per_agent_p90_s": round(percentile(pooled, 90), 3),
            "per_agent_max_s": round(max(pooled), 3) if pooled else None,
            "wire_bytes_per_agent_median": round(
                median([float(e["wire_bytes_per_agent_median"]) for e in entries])
            ),
            "wire_vs_model_median": round(median([e["wire_vs_model"] for e in entries]), 3),
        })  # fmt: skip
    return out


if __name__ == "__main__":
    import json
    import sys

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=2))
