"""The large-fleet lines of benchmarks/README.md (deploy to 10,000 devices, ingest under them),
from results/deploy_scale.json and results/ingest_scale.json."""

from __future__ import annotations

from typing import Any

from benchmarks.common import read_result

DEPLOY_LIMIT_S = 10.0
FLEET_LIMIT_S = 30.0


def scale_targets(mode: str) -> list[tuple[str, float | None, float, str]]:
    """(target, measured, limit, unit) for the targets table; lower is better for each."""
    out: list[tuple[str, float | None, float, str]] = []
    fleet = read_result(mode, "fleet_scale")
    if fleet is not None:
        n = fleet["settings"]["devices"]
        slowest = _slowest(fleet["summary"]["all_s_runs"])
        out.append((f"{n} simulated devices all verified within {FLEET_LIMIT_S:.0f} s "
                    "(slowest run)", slowest, FLEET_LIMIT_S, " s"))  # fmt: skip
    deploy = read_result(mode, "deploy_scale")
    if deploy is not None:
        n = deploy["settings"]["devices"]
        out.append((f"deploy to {n} devices returns within {DEPLOY_LIMIT_S:.0f} s (slowest run)",
                    deploy["summary"]["deploy_s_max"], DEPLOY_LIMIT_S, " s"))  # fmt: skip
    ingest = read_result(mode, "ingest_scale")
    if ingest is not None:
        st, steady = ingest["settings"], ingest["steady"]
        # Bounded: one reporting interval is the most a report may wait before it is stored.
        out.append((f"ingest of {st['devices']} devices every {st['interval_s']:.0f} s: "
                    f"lag p99 (last third of the run) within one interval",
                    steady["lag_p99_last_third_s"], st["interval_s"], " s"))  # fmt: skip
    return out


def scale_lines(mode: str) -> list[str]:
    """The paragraph of each large-fleet section that has run."""
    lines: list[str] = []
    fleet: dict[str, Any] | None = read_result(mode, "fleet_scale")
    if fleet is not None:
        s, st = fleet["summary"], fleet["settings"]
        lines += ["", f"{st['devices']} simulated devices ({st['worker_processes']} processes, a "
                  f"{st['model_bytes'] / 1024:.0f} KiB model): all verified "
                  f"{_fmt_s(s['all_s_median'])} after the deploy command started (median of "
                  f"{st['runs']}; runs {' '.join(_fmt_s(x) for x in s['all_s_runs'])}); the deploy "
                  f"command took {_fmt_s(s['deploy_command_s_median'])}; devices connected in "
                  f"{_fmt_s(fleet['connect_s'])}, provisioned through the API in "
                  f"{_fmt_s(fleet['provision_s'])}."]  # fmt: skip
    deploy: dict[str, Any] | None = read_result(mode, "deploy_scale")
    if deploy is not None:
        s, st = deploy["summary"], deploy["settings"]
        runs = " ".join(f"{r['deploy_s']:.2f}" for r in deploy["runs"])
        loads = "; ".join(" ".join(str(x) for x in r["load_average"]) for r in deploy["runs"])
        lines += ["", f"Deploy to {st['devices']} devices ({st['storage']}, mosquitto), the API "
                  f"call timed to its answer: median {s['deploy_s_median']:.2f} s, slowest "
                  f"{s['deploy_s_max']:.2f} s (runs {runs} s), {s['per_device_ms_median']:.3f} "
                  f"ms per device; load average before each run {loads} (a shared two-core "
                  "machine, other jobs running)."]  # fmt: skip
    ingest: dict[str, Any] | None = read_result(mode, "ingest_scale")
    if ingest is not None:
        st, steady, burst = ingest["settings"], ingest["steady"], ingest["burst"]
        lines += ["", f"Ingest, {st['devices']} devices reporting telemetry every "
                  f"{st['interval_s']:.0f} s ({steady['rate_per_s']:.0f} reports/s for "
                  f"{st['duration_s']:.0f} s, {st['storage']}): lag from queue to commit p50 "
                  f"{steady['lag_p50_s']:.3f} s, p99 {steady['lag_p99_s']:.3f} s, max "
                  f"{steady['lag_max_s']:.3f} s; p99 in the first third "
                  f"{steady['lag_p99_first_third_s']:.3f} s and the last third "
                  f"{steady['lag_p99_last_third_s']:.3f} s (bounded: it does not grow). One "
                  f"report from every device at once: all stored in {burst['drained_s']:.2f} s "
                  f"({burst['reports_per_s']:.0f} reports/s). Load average at the start "
                  f"{' '.join(str(x) for x in ingest['load_average'])}."]  # fmt: skip
    return lines


def _slowest(runs: list[float | None]) -> float | None:
    """The slowest run, or None when a run did not finish (every device must verify)."""
    if not runs or any(r is None for r in runs):
        return None
    return max(r for r in runs if r is not None)


def _fmt_s(value: float | None) -> str:
    return "- (not every device verified)" if value is None else f"{value:.2f} s"
