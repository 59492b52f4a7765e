"""Section 2b: 200 lightweight simulated devices (the agent's update and verification code,
many devices per asyncio loop, no onnxruntime) against the real registry and mosquitto."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import PYTHON, REPO, WORK, log, median, percentile
from benchmarks.harness import Deployment
from benchmarks.models import update_model_file

MODEL = "sim"
GROUP = "sim"
TMPFS = Path("/dev/shm")


@dataclass(frozen=True)
class Settings:
    """How many devices, in how many processes, and how often."""

    devices: int
    workers: int
    runs: int
    chunk_kib: int = 256
    timeout_s: float = 120.0
    hidden: int = 1024  # the update model's hidden width: 1024 makes it ~4 MiB, 64 ~25 KiB
    section: str = "fleet_sim"


QUICK = Settings(devices=50, workers=2, runs=1)
FULL = Settings(devices=200, workers=4, runs=3)
# A large fleet: 2,000 devices, with a small model so that the figure is the protocol's
# fan-out (assignments, releases, verification), not 8 GB of chunks through one broker.
SCALE_QUICK = Settings(devices=500, workers=2, runs=1, hidden=64, section="fleet_scale")
SCALE_FULL = Settings(devices=2000, workers=8, runs=2, hidden=64, section="fleet_scale")


def run(mode: str) -> dict[str, Any]:
    """The fleet of `mode` (200 devices in full runs)."""
    return run_fleet(mode, QUICK if mode == "quick" else FULL)


def run_scale(mode: str) -> dict[str, Any]:
    """The large fleet of `mode` (2,000 devices in full runs)."""
    return run_fleet(mode, SCALE_QUICK if mode == "quick" else SCALE_FULL)


def run_fleet(mode: str, settings: Settings) -> dict[str, Any]:
    """Provision, start the workers, deploy `runs` new versions, collect per-device times."""
    root = WORK / settings.section.replace("_", "-")
    # Each real device has its own flash; 200 of them sharing this machine's one disk would
    # measure fsync queueing, not the protocol: the simulated stores live in tmpfs.
    state_root = (TMPFS if TMPFS.is_dir() else root) / "edge-bench-sim-state"
    shutil.rmtree(state_root, ignore_errors=True)
    deployment = Deployment(root, chunk_kib=settings.chunk_kib)
    deployment.start()
    workers: list[subprocess.Popen[str]] = []
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    results = []
    try:
        ids = [f"sim-{i:04d}" for i in range(settings.devices)]
        began = time.monotonic()
        bundles = deployment.provision(ids, GROUP)
        provision_s = time.monotonic() - began
        specs = [
            {"device_id": d, "password": (bundles[d] / "mqtt-password").read_text().strip(),
             "root": str(bundles[d] / "root.json"), "state_dir": str(state_root / d)}
            for d in ids
        ]  # fmt: skip
        began = time.monotonic()
        for index in range(settings.workers):
            spec_file = root / f"worker-{index}.json"
            spec_file.write_text(json.dumps({
                "url": f"mqtt://127.0.0.1:{deployment.mqtt_port}",
                "prefix": "edge/v1",
                "devices": specs[index :: settings.workers],
            }))  # fmt: skip
            worker = subprocess.Popen(
                [PYTHON, "-m", "benchmarks.fleet_sim_worker", str(spec_file)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=(root / f"worker-{index}.log").open("w"), text=True, cwd=REPO,
            )  # fmt: skip
            workers.append(worker)
            threading.Thread(target=_pump, args=(worker, events), daemon=True).start()
        _wait_ready(events, settings.workers, settings.timeout_s)
        connect_s = time.monotonic() - began
        log(f"fleet sim: {settings.devices} devices connected in {connect_s:.1f} s")
        for run_index in range(settings.runs):
            version = deployment.push(update_model_file(500 + run_index, settings.hidden), MODEL)
            time.sleep(0.5)
            started, returned = deployment.deploy(MODEL, version, GROUP)
            # From the deploy command's start: the registry publishes the 200 assignments while
            # the command runs, and devices finish before it returns.
            seen = _collect(events, version, settings.devices, started, settings.timeout_s)
            times = sorted(seen.values())
            entry = {
                "run": run_index,
                "version": version,
                "devices": settings.devices,
                "verified": len(seen),
                "all_s": round(max(times), 3) if len(seen) == settings.devices else None,
                "all_after_return_s": (
                    round(max(times) - (returned - started), 3)
                    if len(seen) == settings.devices
                    else None
                ),
                "p50_s": round(percentile(times, 50), 3),
                "p90_s": round(percentile(times, 90), 3),
                "first_s": round(min(times), 3) if times else None,
                "deploy_command_s": round(returned - started, 3),
                "per_device_s": [round(t, 3) for t in times],
            }
            results.append(entry)
            log(f"fleet sim run {run_index}: {len(seen)}/{settings.devices} verified, all in "
                f"{entry['all_s']} s (median {entry['p50_s']} s)")  # fmt: skip
    finally:
        for worker in workers:
            if worker.stdin is not None:
                worker.stdin.close()
        for worker in workers:
            try:
                worker.wait(timeout=20)
            except subprocess.TimeoutExpired:
                worker.kill()
        deployment.stop()
        shutil.rmtree(state_root, ignore_errors=True)
    complete = [e["all_s"] for e in results if e["all_s"] is not None]
    return {
        "section": settings.section,
        "mode": mode,
        "settings": {
            "devices": settings.devices,
            "worker_processes": settings.workers,
            "runs": settings.runs,
            "chunk_kib": settings.chunk_kib,
            "state_dirs": "tmpfs (/dev/shm)" if str(state_root).startswith("/dev/shm") else "disk",
            "model_bytes": update_model_file(500, settings.hidden).stat().st_size,
        },
        "provision_s": round(provision_s, 2),
        "connect_s": round(connect_s, 2),
        "runs": results,
        "summary": {
            "all_s_median": round(median(complete), 3) if complete else None,
            "all_s_runs": [e["all_s"] for e in results],
            "p50_s_median": round(median([e["p50_s"] for e in results]), 3),
            "deploy_command_s_median": round(median([e["deploy_command_s"] for e in results]), 3),
            "all_after_return_s_median": round(
                median(
                    [
                        e["all_after_return_s"]
                        for e in results
                        if e["all_after_return_s"] is not None
                    ]
                ),
                3,
            ),
        },
    }


def _pump(worker: subprocess.Popen[str], events: queue.Queue[dict[str, Any]]) -> None:
    assert worker.stdout is not None  # noqa: S101 - PIPE
    for line in worker.stdout:
        try:
            events.put(json.loads(line))
        except ValueError:
            continue


def _wait_ready(events: queue.Queue[dict[str, Any]], workers: int, timeout: float) -> None:
    ready = 0
    deadline = time.monotonic() + timeout
    while ready < workers:
        try:
            event = events.get(timeout=max(0.1, deadline - time.monotonic()))
        except queue.Empty:
            raise RuntimeError("the simulated devices did not all connect in time") from None
        if event.get("event") == "ready":
            ready += 1


def _collect(
    events: queue.Queue[dict[str, Any]], version: int, count: int, since: float, timeout: float
) -> dict[str, float]:
    seen: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < count and time.monotonic() < deadline:
        try:
            event = events.get(timeout=0.5)
        except queue.Empty:
            continue
        if event.get("event") == "verified" and event.get("version") == version:
            seen.setdefault(event["device"], event["t"] - since)
    return seen


if __name__ == "__main__":
    import sys

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=2))
