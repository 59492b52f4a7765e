"""Shared helpers: paths, processes pinned to CPUs, ports, readiness polls, memory, results."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_common import processes as children

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
CACHE = BENCH / ".cache"
WORK = CACHE / "work"
BIN = Path(sys.executable).parent
PYTHON = sys.executable
# Two cores: every server runs on CPU 0 and the load generator on CPU 1, for every peer alike.
SERVER_CPUS = "0"
LOAD_CPUS = "1"


def log(message: str) -> None:
    """Progress on stderr, with a wall clock, so a long run shows where it is."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def pinned(argv: Sequence[str], cpus: str | None) -> list[str]:
    """`argv` under `taskset -c cpus` (the whole process tree inherits the mask)."""
    if cpus is None or shutil.which("taskset") is None:
        return list(argv)
    return ["taskset", "-c", cpus, *argv]


def start(
    argv: Sequence[str],
    log_file: Path,
    *,
    cpus: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a process with its output in `log_file`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        return subprocess.Popen(
            pinned(argv, cpus),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )


def stop(process: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` (`edge_common.processes.stop`)."""
    children.stop(process, timeout)


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of GET `url`, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
            return int(response.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except (urllib.error.URLError, OSError):
        return None


def get_json(url: str, timeout: float = 5.0) -> Any:
    """GET a JSON document from a loopback URL."""
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - loopback
        return json.loads(response.read())


def wait_ready(
    url: str,
    process: subprocess.Popen[bytes] | None,
    log_file: Path,
    timeout: float = 90.0,
    interval: float = 0.01,
) -> float:
    """Poll `url` until it answers 200; return the seconds waited. Fails if the process dies."""
    started = time.monotonic()
    deadline = started + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited:\n{tail(log_file)}")
        if http_status(url, timeout=1.0) == 200:
            return time.monotonic() - started
        time.sleep(interval)
    raise RuntimeError(f"{url} not ready within {timeout:.0f} s:\n{tail(log_file)}")


def tail(path: Path, size: int = 3000) -> str:
    """The end of a log file."""
    if not path.exists():
        return ""
    return path.read_text(errors="replace")[-size:]


@dataclass(frozen=True)
class Memory:
    """Resident and proportional set size of one process, in MiB."""

    rss_mib: float
    pss_mib: float

    def to_dict(self) -> dict[str, float]:
        """Rounded for the results file."""
        return {"rss_mib": round(self.rss_mib, 1), "pss_mib": round(self.pss_mib, 1)}


def memory(pid: int) -> Memory:
    """RSS and PSS from /proc/PID/smaps_rollup."""
    values: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in ("Rss:", "Pss:"):
            values[parts[0]] = int(parts[1])
    return Memory(values["Rss:"] / 1024, values["Pss:"] / 1024)


def median(values: Sequence[float]) -> float:
    """The median (0.0 for no values)."""
    return float(statistics.median(values)) if values else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return float(ordered[index])


def results_dir(mode: str) -> Path:
    """results/ for the full run, results/quick/ for the quick one."""
    directory = RESULTS if mode == "full" else RESULTS / "quick"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def write_result(mode: str, name: str, data: dict[str, Any]) -> Path:
    """Write one section's results as JSON."""
    path = results_dir(mode) / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    return path


def read_result(mode: str, name: str) -> dict[str, Any] | None:
    """One section's results, if that section has run."""
    path = results_dir(mode) / f"{name}.json"
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def load_average() -> tuple[float, float, float]:
    """The 1, 5 and 15 minute load averages (the machine is shared: they go in the results)."""
    return os.getloadavg()


@contextlib.contextmanager
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """A list of processes that are all stopped on the way out, whatever happens."""
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            with contextlib.suppress(Exception):
                stop(process, timeout=10)


def command_version(argv: Sequence[str]) -> str:
    """The first line a `--version`-style command prints, or 'not installed'."""
    if shutil.which(argv[0]) is None and not Path(argv[0]).exists():
        return "not installed"
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (result.stdout or result.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


def package_version(name: str, python: str = PYTHON) -> str:
    """The version of an installed distribution in the environment of `python`."""
    code = (
        "import importlib.metadata as m, sys\n"
        "try: print(m.version(sys.argv[1]))\n"
        "except m.PackageNotFoundError: print('not installed')"
    )
    result = subprocess.run(
        [python, "-c", code, name], capture_output=True, text=True, timeout=30, check=False
    )
    return result.stdout.strip() or "not installed"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and cpu == "unknown":
                cpu = line.split(":", 1)[1].strip()
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "simd": sorted(flags & {"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "fma"}),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in load_average()],
    }
