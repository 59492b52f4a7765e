"""Run the benchmarks: `python -m benchmarks.run --quick | --full [--only SECTION ...]`.

Writes results/*.json (results/quick/*.json for --quick) and regenerates the tables of
benchmarks/README.md between its markers. A failing section is recorded and the others run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any

from benchmarks import (
    agent_costs,
    dashboard_scale,
    deploy_scale,
    fleet_sim,
    footprint,
    ingest_scale,
    propagation,
    quantization,
    serving,
    shadow,
)
from benchmarks.common import (
    BENCH,
    PYTHON,
    REPO,
    command_version,
    log,
    machine,
    package_version,
    read_result,
    write_result,
)
from benchmarks.harness import mosquitto_binary
from benchmarks.models import model
from benchmarks.profile_agent import main as profile_agent
from benchmarks.report import update_readme


def profile(mode: str) -> dict[str, Any]:
    """py-spy on the agent serving the small model at c=32 (full runs only)."""
    if mode == "quick":
        return {"section": "profile", "mode": mode, "skipped": "full runs only"}
    text = profile_agent("small", 32, 8)
    return {"section": "profile", "mode": mode, "report": str(text.relative_to(BENCH))}


SECTIONS: dict[str, Callable[[str], dict[str, Any]]] = {
    "quantization": quantization.run,
    "serving": serving.run,
    "shadow": shadow.run,
    "agent_costs": agent_costs.run,
    "profile": profile,
    "footprint": footprint.run,
    "propagation": propagation.run,
    "fleet_sim": fleet_sim.run,
    "fleet_scale": fleet_sim.run_scale,
    "deploy_scale": deploy_scale.run,
    "ingest_scale": ingest_scale.run,
    "dashboard_scale": dashboard_scale.run,
}
PACKAGES = (
    "onnxruntime", "numpy", "aiohttp", "paho-mqtt", "cryptography", "scikit-learn", "skl2onnx",
    "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "pydantic",
)  # fmt: skip


def versions() -> dict[str, str]:
    """Everything that could change a number."""
    out = {name: package_version(name) for name in PACKAGES}
    mlserver_python = BENCH / ".venv-mlserver" / "bin" / "python"
    if mlserver_python.exists():
        for name in ("mlserver", "onnxruntime", "fastapi", "uvicorn", "uvloop"):
            out[f"{name} (MLServer venv)"] = package_version(name, str(mlserver_python))
    else:
        out["mlserver"] = "not installed"
    out["wrk"] = command_version(["wrk", "-v"]).split(" [")[0].removeprefix("wrk ")
    try:
        out["mosquitto"] = command_version([mosquitto_binary(), "-h"]).replace("mosquitto ", "")
    except RuntimeError:
        out["mosquitto"] = "not installed"
    return out


def _commit() -> str:
    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                            text=True, check=False)  # fmt: skip
    return result.stdout.strip() or "unknown"


def with_rerun(earlier: dict[str, Any], rerun: dict[str, Any]) -> dict[str, Any]:
    """The run record after `--only` reran some sections: the earlier run's, with those
    sections' walls and failures replaced and the rerun's where and when added to `reruns`."""
    walls = {**earlier.get("section_wall_s", {}), **rerun["section_wall_s"]}
    failures = {k: v for k, v in earlier.get("failures", {}).items()
                if k not in rerun["section_wall_s"]} | rerun["failures"]  # fmt: skip
    note = {k: rerun[k] for k in ("started", "commit", "wall_s")}
    note.update(sections=sorted(rerun["section_wall_s"]),
                load_average_at_start=rerun["machine"]["load_average_at_start"])  # fmt: skip
    return earlier | {"section_wall_s": walls, "failures": failures,
                      "reruns": [*earlier.get("reruns", []), note]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Run the chosen sections; exit 1 if any failed."""
    parser = argparse.ArgumentParser(description=__doc__)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--quick", action="store_true", help="a smaller run, under 2 minutes")
    group.add_argument("--full", action="store_true", help="everything, under 15 minutes")
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS), help="run only these")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    if shutil.which("wrk") is None:
        log("wrk is missing: run benchmarks/ensure-tools.sh (make bench does)")
        return 2
    began = time.monotonic()
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    info: dict[str, Any] = {"machine": machine(), "versions": versions(), "commit": _commit(),
                            "started": started, "mode": mode,
                            "command": "make bench" if mode == "full" else "make bench-quick",
                            "python": PYTHON}  # fmt: skip
    for name in ("small", "heavy", "tree"):
        model(name)  # built once and cached, outside the timed sections
    walls: dict[str, float] = {}
    failures: dict[str, str] = {}
    for name in args.only or list(SECTIONS):
        log(f"--- {name} ({mode})")
        section_began = time.monotonic()
        try:
            write_result(mode, name, SECTIONS[name](mode))
        except Exception as e:  # noqa: BLE001 - recorded, the other sections still run
            failures[name] = f"{type(e).__name__}: {str(e)[:500]}"
            log(f"{name} failed:\n{traceback.format_exc()}")
        walls[name] = round(time.monotonic() - section_began, 1)
    info.update(wall_s=round(time.monotonic() - began, 1), section_wall_s=walls, failures=failures)
    earlier = read_result(mode, "machine") if args.only else None
    write_result(mode, "machine", info if earlier is None else with_rerun(earlier, info))
    update_readme(mode)
    log(f"done in {info['wall_s']:.0f} s; tables in {BENCH / 'README.md'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
