"""Where the agent's time goes under load: py-spy on the agent server while wrk drives it.

`python -m benchmarks.profile_agent [small|heavy-int8|heavy-fp32] [CONCURRENCY] [SECONDS] [TAG]`
starts the agent as the serving benchmark does (`edge-agent run` with a registry and mosquitto,
the model received as an update, on CPU 0), loads it with wrk from CPU 1, samples it with
py-spy (raw, per thread, idle samples excluded) and writes results/profile-<model>-c<C>[-TAG]
.json and .txt: inclusive and self shares of the busy samples per function, and each converted
to microseconds of CPU per request. The raw py-spy samples are kept next to them (.raw.txt).
"""

from __future__ import annotations

import collections
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from edge_common.processes import free_port

from benchmarks.common import (
    BIN,
    REPO,
    RESULTS,
    SERVER_CPUS,
    WORK,
    start,
    stop,
    wait_ready,
)
from benchmarks.serving import wrk
from benchmarks.serving_device import ServingDevices
from benchmarks.serving_peers import served_models, write_bodies

IDLE = ("EpollSelector.select", "select (selectors.py", "Condition.wait", "_worker (concurrent")


def _aggregate(raw: Path) -> dict[str, Any]:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    busy = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if any(marker in frames[-1] for marker in IDLE):
            continue  # waiting, not working
        n = int(count)
        busy += n
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    return {"busy_samples": busy, "inclusive": inclusive, "self": own}


def main(model_key: str = "small", concurrency: int = 32, seconds: int = 10, tag: str = "") -> Path:
    """Profile and write the report; return the text file."""
    py_spy = shutil.which("py-spy") or str(BIN / "py-spy")
    work = WORK / "profile"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (served,) = served_models((model_key,))
    bodies = write_bodies(served, work)
    port = free_port()
    devices = ServingDevices(work / "deployment")
    devices.start()
    log_file = work / "agent.log"
    process = None
    raw = work / "py-spy.txt"
    try:
        process = start(devices.argv(served, port), log_file, cpus=SERVER_CPUS, cwd=REPO)
        wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", process, log_file, timeout=120)
        url = f"http://127.0.0.1:{port}/v2/models/{served.name}/infer"
        sampler = subprocess.Popen(
            [py_spy, "record", "--pid", str(process.pid), "--rate", "500", "--duration",
             str(seconds), "--format", "raw", "--output", str(raw), "--nonblocking"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(0.5)
        cpu_before = sum(psutil.Process(process.pid).cpu_times()[:2])
        result = wrk(url, bodies.json_file, None, concurrency=concurrency, seconds=seconds,
                     out=work / "wrk.json")  # fmt: skip
        cpu = sum(psutil.Process(process.pid).cpu_times()[:2]) - cpu_before
        sampler.wait(timeout=seconds + 30)
    finally:
        stop(process)
        devices.stop()
    data = _aggregate(raw)
    us_per_request = cpu / max(1, result["requests"]) * 1e6
    busy = max(1, data["busy_samples"])

    def rows(counter: collections.Counter[str], limit: int) -> list[dict[str, Any]]:
        return [{"function": f, "share": round(n / busy, 4),
                 "us_per_request": round(n / busy * us_per_request, 1)}
                for f, n in counter.most_common(limit)]  # fmt: skip

    report = {
        "model": model_key,
        "concurrency": concurrency,
        "requests_per_s": round(result["requests"] / (result["duration_us"] / 1e6), 1),
        "cpu_us_per_request": round(us_per_request, 1),
        "busy_samples": data["busy_samples"],
        "inclusive": rows(data["inclusive"], 80),
        "self": rows(data["self"], 40),
    }
    stem = f"profile-{model_key}-c{concurrency}" + (f"-{tag}" if tag else "")
    RESULTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(raw, RESULTS / f"{stem}.raw.txt")
    (RESULTS / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"{model_key} c={concurrency}: {report['requests_per_s']} req/s, "
             f"{report['cpu_us_per_request']} µs CPU per request, {busy} busy samples", "",
             "inclusive (share of busy samples, µs of CPU per request):"]  # fmt: skip
    lines += [f"  {r['share'] * 100:5.1f}%  {r['us_per_request']:7.1f} µs  {r['function']}"
              for r in report["inclusive"]]  # fmt: skip
    lines += ["", "self:"]
    lines += [f"  {r['share'] * 100:5.1f}%  {r['us_per_request']:7.1f} µs  {r['function']}"
              for r in report["self"]]  # fmt: skip
    text = RESULTS / f"{stem}.txt"
    text.write_text("\n".join(lines) + "\n")
    return text


if __name__ == "__main__":
    args = sys.argv[1:]
    path = main(args[0] if args else "small", int(args[1]) if len(args) > 1 else 32,
                int(args[2]) if len(args) > 2 else 10,
                args[3] if len(args) > 3 else "")  # fmt: skip
    print(path.read_text())
