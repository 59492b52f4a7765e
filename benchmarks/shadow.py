"""Section 1b: what a shadow costs the answers (experiments, docs/inference-api.md).

The bare InferenceServer, the same with a shadow of its model attached, and the bare server
started a second time run at once, on the server CPU, and each load goes round the three in
windows of `duration_s`, `pairs` times (the order turns every round). A p99 ratio of two
servers measured minutes apart moves with this shared machine's other tenants by more than
the effect measured; windows next to each other see the same machine. The ratio reported is
the median of the per-round ratios; each row also says which share of the inputs the shadow
ran (the rest it dropped: a server with no idle moment).

The second bare server is the control: it differs from the first in nothing, so its ratio to
the first is what the machine's noise alone gives. A shadow's ratio inside that spread is a
cost this machine cannot tell from nothing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from benchmarks.common import WORK, stop
from benchmarks.serving import FULL, QUICK, Load, Measured, Settings, load_of, measure, start_server
from benchmarks.serving_peers import (
    DIAGNOSTIC_LOADS,
    PEERS,
    Bodies,
    Served,
    served_models,
    write_bodies,
)
from benchmarks.serving_stats import ratios, summarize

# The ratios are the second's and the third's over the first's.
SERVERS = ("agent-bare", "agent-shadow", "agent-bare-again")


def run(mode: str) -> dict[str, Any]:
    """The paired loads on every model the diagnostics cover; the results document."""
    settings = QUICK if mode == "quick" else FULL
    work = WORK / "shadow"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    models = served_models(tuple(m for m in settings.models if m in DIAGNOSTIC_LOADS))
    runs: list[dict[str, Any]] = []
    for served in models:
        runs += paired(served, write_bodies(served, work / "bodies"), settings, work)
    return {
        "section": "shadow",
        "mode": mode,
        "settings": {"duration_s": settings.duration_s, "pairs": settings.pairs,
                     "warmup_requests": settings.warmup_requests, "servers": list(SERVERS),
                     "loads": {m.key: list(DIAGNOSTIC_LOADS[m.key]) for m in models}},
        "runs": runs,
        "summary": summarize(runs),
        "ratios": ratios(runs),
    }  # fmt: skip


def paired(served: Served, bodies: Bodies, settings: Settings, work: Path) -> list[dict[str, Any]]:
    """Every server up, each load of `served` going round them `settings.pairs` times."""
    started: dict[str, subprocess.Popen[bytes]] = {}
    measured: dict[str, tuple[Measured, Load]] = {}
    try:
        for key in SERVERS:
            log_file = work / "logs" / f"{key}-{served.key}.log"
            process, port, grpc_port = start_server(PEERS[key], served, work, log_file)
            started[key] = process
            url = f"http://127.0.0.1:{port}{PEERS[key].infer_path(served)}"
            load = load_of("json", bodies, url, grpc_port, served)
            for _ in range(settings.warmup_requests):
                load.check()
            measured[key] = (Measured(key, served.key, "json", process.pid, port), load)
        runs = []
        for concurrency in DIAGNOSTIC_LOADS[served.key]:
            for pair in range(settings.pairs):
                turn = pair % len(SERVERS)
                for key in SERVERS[turn:] + SERVERS[:turn]:
                    where, load = measured[key]
                    runs.append(measure(where, load, c=concurrency, settings=settings,
                                        work=work, round_index=pair))  # fmt: skip
        return runs
    finally:
        for process in started.values():
            stop(process)
