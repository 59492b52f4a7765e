"""Section 1: the agent's OIP v2 endpoint against the servers users would pick instead.

Every server gets the same model file, onnxruntime with 1 intra-op and 1 inter-op thread, the
same request bodies and the same load generator (wrk, one thread, a Lua body script). Servers
run on CPU 0, wrk on CPU 1. Each round starts every server once per model and runs every load
against it; rounds rotate the order of the servers, and ratios are taken within a round.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil
from edge_common.processes import free_port

from benchmarks import grpc_load
from benchmarks.common import (
    BENCH,
    LOAD_CPUS,
    REPO,
    SERVER_CPUS,
    WORK,
    log,
    median,
    pinned,
    start,
    stop,
    wait_ready,
)
from benchmarks.serving_device import ServingDevices
from benchmarks.serving_peers import (
    PEERS,
    Bodies,
    Peer,
    Served,
    device_agent,
    served_models,
    write_bodies,
)
from benchmarks.serving_stats import ratios, summarize

LUA = BENCH / "wrk" / "oip.lua"


@dataclass(frozen=True)
class Settings:
    """How long and how often."""

    models: tuple[str, ...]
    peers: tuple[str, ...]
    concurrencies: tuple[int, ...]
    duration_s: int
    warmup_requests: int
    rounds: int
    heavy_peers: tuple[str, ...] | None = None  # peers run on the heavy models (None: all)
    heavy_concurrencies: tuple[int, ...] | None = None
    diagnostics: tuple[str, ...] = ()  # agent variants that measure what each cause costs
    pairs: int = 3  # rounds of the shadow section's servers, per load (a multiple of three)


QUICK = Settings(
    models=("small", "heavy-fp32"),
    peers=("agent", "naive", "fastapi", "mlserver", "constant"),
    concurrencies=(1, 32),
    duration_s=1,
    warmup_requests=20,
    rounds=1,
    heavy_peers=("agent", "naive"),
    heavy_concurrencies=(128,),
    diagnostics=("agent-bare",),
)
FULL = Settings(
    models=("small", "heavy-fp32", "heavy-int8"),
    peers=("agent", "naive", "fastapi", "mlserver", "constant"),
    concurrencies=(1, 32, 128),
    duration_s=2,
    warmup_requests=50,
    rounds=3,
    diagnostics=("agent-bare",),
    pairs=12,
)


def wrk(
    url: str, body: Path, header_length: int | None, *, concurrency: int, seconds: int, out: Path
) -> dict[str, Any]:
    """One wrk run on the load CPU; the Lua script writes its JSON summary to `out`."""
    out.unlink(missing_ok=True)
    env = {
        "BENCH_BODY": str(body),
        "BENCH_OUT": str(out),
        "BENCH_CONTENT_TYPE": "application/octet-stream" if header_length else "application/json",
        "BENCH_HEADER_LENGTH": str(header_length or ""),
    }
    # wrk takes whole seconds only.
    argv = ["wrk", "-t1", f"-c{concurrency}", f"-d{seconds}s", "--timeout", "10s"]
    argv += ["-s", str(LUA), url]
    import os  # noqa: PLC0415

    result = subprocess.run(
        pinned(argv, LOAD_CPUS), env={**os.environ, **env}, capture_output=True, text=True,
        timeout=seconds + 60, check=False,
    )  # fmt: skip
    if result.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({result.returncode}): {result.stderr}{result.stdout}")
    data: dict[str, Any] = json.loads(out.read_text())
    return data


@dataclass(frozen=True)
class Counters:
    """From the agent's /metrics: rows and session.runs, and requests answered other than 200."""

    rows: float
    batches: float
    failed: float


# 499: the client went away before the answer; h2load cancels the streams in flight when its
# duration is over, and they are counted so. Every other status is an error of the run.
ANSWERED = ("200", "499")


def _agent_counters(port: int) -> Counters:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    rows = batches = failed = 0.0
    for line in text.splitlines():
        if line.startswith("edge_agent_batch_size_sum"):
            rows += float(line.split()[-1])
        elif line.startswith("edge_agent_batch_size_count"):
            batches += float(line.split()[-1])
        elif line.startswith("edge_agent_requests_total{") and not any(
            f'status="{ok}"' in line for ok in ANSWERED
        ):
            failed += float(line.split()[-1])
    return Counters(rows, batches, failed)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of the server and its children (noise from others excluded)."""
    process = psutil.Process(pid)
    total = sum(process.cpu_times()[:2])
    for child in process.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            continue
    return float(total)


def _check_answer(url: str, body: Path, header_length: int | None) -> str:
    """One request before the load: the server must answer 200 with outputs."""
    headers = {"Content-Type": "application/json"}
    if header_length:
        headers = {"Content-Type": "application/octet-stream",
                   "Inference-Header-Content-Length": str(header_length)}  # fmt: skip
    request = urllib.request.Request(url, data=body.read_bytes(), headers=headers)  # noqa: S310
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - loopback
        data = response.read()
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}")
    if header_length:
        return f"{len(data)} bytes (binary outputs)"
    return json.dumps(json.loads(data)["outputs"][0]["data"][:3])


def run(mode: str) -> dict[str, Any]:
    """Run the serving matrix; return the results document."""
    settings = QUICK if mode == "quick" else FULL
    work = WORK / "serving"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    models = served_models(settings.models)
    bodies = {m.key: write_bodies(m, work / "bodies") for m in models}
    peers = dict(PEERS)
    skipped = {k: reason for k in settings.peers if (reason := peers[k].available())}
    runs: list[dict[str, Any]] = []
    answers: dict[str, str] = {}
    startup: dict[str, list[float]] = {}
    devices = ServingDevices(work / "deployment")
    devices.start()
    peers["agent"] = replace(peers["agent"], launch=device_agent(devices))
    try:
        for round_index in range(settings.rounds):
            order = [k for k in settings.peers if k not in skipped]
            order = order[round_index % len(order) :] + order[: round_index % len(order)]
            order += list(settings.diagnostics)
            for served in models:
                for key in order:
                    peer = peers[key]
                    concurrencies = _loads(peer, served, settings)
                    if not concurrencies:
                        continue
                    runs += _serve_and_load(
                        peer, served, bodies[served.key], concurrencies, settings, work,
                        round_index, answers, startup,
                    )  # fmt: skip
    finally:
        devices.stop()
    return {
        "section": "serving",
        "mode": mode,
        "settings": {
            "duration_s": settings.duration_s,
            "warmup_requests": settings.warmup_requests,
            "rounds": settings.rounds,
            "concurrencies": list(settings.concurrencies),
            "server_cpus": SERVER_CPUS,
            "load_cpus": LOAD_CPUS,
            "onnxruntime_threads": {"intra_op": 1, "inter_op": 1},
            "wrk": "wrk -t1 -cC -dDs --timeout 10s -s benchmarks/wrk/oip.lua",
        },
        "skipped": skipped,
        "answers": answers,
        "startup_s": {k: round(median(v), 2) for k, v in startup.items()},
        "runs": runs,
        "summary": summarize(runs),
        "ratios": ratios(runs),
    }


def _loads(peer: Peer, served: Served, settings: Settings) -> tuple[int, ...]:
    """The concurrencies `peer` runs on `served` (none: it skips that model)."""
    if peer.only is not None:
        return peer.only.get(served.key, ())
    if served.key == "small":
        return settings.concurrencies
    if peer.key == "constant":
        return ()  # the ceiling does no inference: one model is enough
    if settings.heavy_peers is not None and peer.key not in settings.heavy_peers:
        return ()
    return settings.heavy_concurrencies or settings.concurrencies


def _serve_and_load(  # noqa: PLR0917 - one call site, read together with it
    peer: Peer,
    served: Served,
    bodies: Bodies,
    concurrencies: tuple[int, ...],
    settings: Settings,
    work: Path,
    round_index: int,
    answers: dict[str, str],
    startup: dict[str, list[float]],
) -> list[dict[str, Any]]:
    log_file = work / "logs" / f"{peer.key}-{served.key}.log"
    began = time.monotonic()
    process, port, grpc_port = start_server(peer, served, work, log_file)
    runs = []
    try:
        startup.setdefault(peer.key, []).append(time.monotonic() - began)
        url = f"http://127.0.0.1:{port}{peer.infer_path(served)}"
        agent = peer.key.startswith("agent")
        for body in peer.bodies:
            load = load_of(body, bodies, url, grpc_port, served)
            answers[f"{peer.key}/{served.key}/{body}"] = load.check()
            for _ in range(settings.warmup_requests):
                load.check()
            for concurrency in concurrencies:
                where = Measured(peer.key, served.key, body, process.pid, port if agent else None)
                runs.append(measure(where, load, c=concurrency, settings=settings, work=work,
                                     round_index=round_index))  # fmt: skip
    finally:
        stop(process)
    return runs


@dataclass(frozen=True)
class Measured:
    """What one load runs against: the server, its model and body, and its metrics port
    (None: not an agent, no /metrics to read)."""

    peer: str
    model: str
    body: str
    pid: int
    agent_port: int | None


def measure(
    where: Measured, load: Load, *, c: int, settings: Settings, work: Path, round_index: int
) -> dict[str, Any]:
    """One load of `settings.duration_s` at `concurrency`: its entry in the results."""
    port = where.agent_port
    before = _agent_counters(port) if port else None
    shadow_before = _shadow_totals(port) if port else None
    cpu_before = _cpu_seconds(where.pid)
    result = load.run(c, settings.duration_s, work)
    cpu = _cpu_seconds(where.pid) - cpu_before
    after = _agent_counters(port) if port else None
    shadow_after = _shadow_totals(port) if port else None
    entry = _entry(result, round_index, where.model, peer=where.peer, body=where.body, c=c)
    entry["cpu_us_per_request"] = round(cpu / max(1, result["requests"]) * 1e6, 1)
    if before is not None and after is not None:
        _agent_deltas(entry, before, after)
    if shadow_before is not None and shadow_after is not None:
        _shadow_share(entry, shadow_before, shadow_after)
    log(
        f"serving r{round_index} {where.model:10} {where.peer:8} {where.body:6}"
        f" c={c:<3}"
        f" {entry['rps']:8.0f} req/s p50 {entry['p50_ms']:7.2f} ms"
        f" p99 {entry['p99_ms']:7.2f} ms errors {entry['errors']}"
    )
    return entry


BIND_FAILURES = ("Address already in use", "cannot listen")
START_ATTEMPTS = 3


def start_server(
    peer: Peer, served: Served, work: Path, log_file: Path
) -> tuple[subprocess.Popen[bytes], int, int]:
    """Start `peer` on free ports and wait until it is ready; return it and its ports.

    A port found free can be taken by another process of this shared machine before the
    server binds it: such a start is tried again on other ports.
    """
    for attempt in range(START_ATTEMPTS):
        port, grpc_port = free_port(), free_port()
        argv, env = peer.launch(served, port, work, grpc_port)
        process = start(argv, log_file, cpus=SERVER_CPUS, env=env, cwd=REPO)
        try:
            wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", process, log_file, timeout=120)
        except RuntimeError as e:
            stop(process)
            if attempt + 1 == START_ATTEMPTS or not any(m in str(e) for m in BIND_FAILURES):
                raise
            log(f"serving: {peer.key} could not bind its ports; starting it again")
            continue
        return process, port, grpc_port
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Load:
    """One body kind: how to check a server's answer and how to load it."""

    check: Callable[[], str]
    run: Callable[[int, int, Path], dict[str, Any]]  # (concurrency, seconds, work) -> summary


def load_of(body: str, bodies: Bodies, url: str, grpc_port: int, served: Served) -> Load:
    if body == "grpc":
        checker = grpc_load.Checker(grpc_port, served)

        def run_grpc(c: int, seconds: int, work: Path) -> dict[str, Any]:
            checker.close()
            return grpc_load.h2load(
                grpc_port, bodies.grpc_file, concurrency=c, seconds=seconds, out=work / "h2.tsv"
            )

        return Load(lambda: _retry(checker.check), run_grpc)
    body_file = bodies.json_file if body == "json" else bodies.binary_file
    header_length = bodies.binary_header_length if body == "binary" else None
    return Load(
        lambda: _check_answer(url, body_file, header_length),
        lambda c, seconds, work: wrk(
            url, body_file, header_length, concurrency=c, seconds=seconds, out=work / "wrk.json"
        ),
    )


def _retry(check: Callable[[], str], attempts: int = 20) -> str:
    """A gRPC listener may come up a moment after the HTTP one answers ready."""
    for _ in range(attempts - 1):
        try:
            return check()
        except Exception:  # noqa: BLE001 - tried again; the last attempt raises
            time.sleep(0.25)
    return check()


def _shadow_totals(port: int) -> dict[str, int] | None:
    """The shadow's inputs ran and dropped so far (GET /v1/status), or None: no shadow."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/status", timeout=5) as r:
        status = json.loads(r.read())
    for experiment in status.get("experiments", []):
        if experiment.get("mode") == "shadow":
            return {k: int(experiment[f"shadow_{k}"]) for k in ("ran", "dropped")}
    return None


def _shadow_share(entry: dict[str, Any], before: dict[str, int], after: dict[str, int]) -> None:
    """Which share of the load's inputs the shadow ran (the rest it dropped: busy server)."""
    ran, dropped = (after[k] - before[k] for k in ("ran", "dropped"))
    entry["shadow_ran"], entry["shadow_dropped"] = ran, dropped
    entry["shadow_ran_share"] = round(ran / max(1, ran + dropped), 3)


def _agent_deltas(entry: dict[str, Any], before: Counters, after: Counters) -> None:
    """Rows per session.run, and answers that were not 200 (h2load sees no gRPC status)."""
    if after.batches > before.batches:
        entry["batch_rows_mean"] = round(
            (after.rows - before.rows) / (after.batches - before.batches), 2
        )
    failed = after.failed - before.failed
    if failed:
        entry["error_detail"]["agent_non_200"] = failed
        entry["errors"] += failed


def _entry(
    result: dict[str, Any], round_index: int, model_key: str, *, peer: str, body: str, c: int
) -> dict[str, Any]:
    seconds = result["duration_us"] / 1e6
    errors = result["errors"]
    return {
        "round": round_index,
        "model": model_key,
        "peer": peer,
        "body": body,
        "concurrency": c,
        "requests": result["requests"],
        "rps": round(result["requests"] / seconds, 1),
        "p50_ms": round(result["latency_us"]["p50"] / 1000, 3),
        "p99_ms": round(result["latency_us"]["p99"] / 1000, 3),
        "errors": sum(errors.values()),
        "error_detail": errors,
    }


if __name__ == "__main__":
    import sys

    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else "quick"), indent=2))
