"""The Markdown tables of benchmarks/README.md, regenerated from results/*.json."""

from __future__ import annotations

import re
from typing import Any

from benchmarks.common import BENCH, read_result
from benchmarks.scale_report import scale_lines, scale_targets
from benchmarks.serving_stats import ratios

README = BENCH / "README.md"
PEER_LABELS = {
    ("agent", "json"): "edge agent (JSON)",
    ("agent", "binary"): "edge agent (binary ext.)",
    ("agent", "grpc"): "edge agent (gRPC)",
    ("naive", "json"): "naive aiohttp handler",
    ("fastapi", "json"): "FastAPI + uvicorn",
    ("mlserver", "json"): "MLServer, custom onnxruntime runtime",
    ("mlserver", "grpc"): "MLServer (gRPC)",
    ("constant", "json"): "aiohttp constant (ceiling)",
}
DIAGNOSTIC_LABELS = {
    "agent": "edge-agent run (MQTT, telemetry, as a device runs it)",
    "agent-bare": "bare InferenceServer (no MQTT, no telemetry)",
    "agent-shadow": "bare InferenceServer with a shadow of the model attached",
    "agent-bare-again": "bare InferenceServer, a second process (the machine's noise)",
}
MODEL_LABELS = {
    "small": "small: sklearn MLP 32-256-256-3, int8 by the registry",
    "heavy-fp32": "heavy: MLP 256-1024-1024-1024-10, fp32",
    "heavy-int8": "heavy: MLP 256-1024-1024-1024-10, int8 by the registry",
}


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |"
              for row in rows]  # fmt: skip
    return lines


def _ratios(serving: dict[str, Any]) -> dict[str, Any]:
    """The ratios of a serving result, taken again from its runs (older files lack some)."""
    runs = serving.get("runs")
    return ratios(runs) if runs else dict(serving.get("ratios", {}))


def _status(ok: bool | None) -> str:
    return "not run" if ok is None else ("**met**" if ok else "**missed**")


def targets(mode: str) -> list[dict[str, Any]]:
    """Every target of the issue with the measured value and whether it is met."""
    out: list[dict[str, Any]] = []
    serving = read_result(mode, "serving") or {}
    ratios = _ratios(serving)
    skipped = serving.get("skipped", {})

    def ratio(key: str, field: str) -> float | None:
        value = ratios.get(key, {}).get(field)
        return None if value is None else float(value)

    def add(name: str, value: float | None, limit: float, above: bool, unit: str = "x") -> None:
        ok = None if value is None else (value >= limit if above else value <= limit)
        shown = "not run" if value is None else f"{value:.2f}{unit}"
        out.append({"target": name, "measured": shown, "status": _status(ok)})

    def mlserver(key: str) -> None:
        if ratio(key, "rps") is None and "mlserver" in skipped:
            out[-1]["measured"] = "not run: " + skipped["mlserver"].splitlines()[0][:120]

    add("small, c=1: agent p50 <= 0.9x naive aiohttp's",
        ratio("small/c1/agent_over_naive", "p50"), 0.9, False)  # fmt: skip
    add("small, c=1: agent p99 <= 1.0x naive aiohttp's",
        ratio("small/c1/agent_over_naive", "p99"), 1.0, False)  # fmt: skip
    add("small, c=32: agent req/s >= 1.5x naive aiohttp",
        ratio("small/c32/agent_over_naive", "rps"), 1.5, True)  # fmt: skip
    add("small, c=32: agent req/s >= 2.5x FastAPI + uvicorn",
        ratio("small/c32/agent_over_fastapi", "rps"), 2.5, True)  # fmt: skip
    add("small, c=32: agent req/s >= 5x MLServer",
        ratio("small/c32/agent_over_mlserver", "rps"), 5.0, True)  # fmt: skip
    mlserver("small/c32/agent_over_mlserver")
    for heavy in ("heavy-fp32", "heavy-int8"):
        key = f"{heavy}/c128/agent_over_naive"
        add(f"{heavy}, c=128: agent req/s >= 2x naive (JSON)", ratio(key, "rps"), 2.0, True)
        add(f"{heavy}, c=128: agent req/s >= 3x naive (binary extension)",
            ratio(f"{heavy}/c128/agent_binary_over_naive", "rps"), 3.0, True)  # fmt: skip
        add(f"{heavy}, c=128: agent p99 <= 0.8x naive's", ratio(key, "p99"), 0.8, False)
    shadowed = _ratios(read_result(mode, "shadow") or {})  # benchmarks/shadow.py: paired
    for c in (1, 32):
        value = shadowed.get(f"small/c{c}/agent-shadow_over_agent-bare", {}).get("p99")
        add(f"small, c={c}: p99 with a shadow attached <= 1.1x without (bare server, paired)",
            value, 1.1, False)  # fmt: skip
        out[-1]["measured"] += _noise(shadowed, f"small/c{c}")
    add("small, c=32, gRPC: agent req/s over MLServer's gRPC server (no target)",
        ratio("small/c32/agent_grpc_over_mlserver_grpc", "rps"), 0.0, True)  # fmt: skip
    out[-1]["status"] = "reported" if out[-1]["status"] != "not run" else "not run"
    mlserver("small/c32/agent_grpc_over_mlserver_grpc")
    propagation = read_result(mode, "propagation") or {}
    for item in propagation.get("summary", []):
        if item["transport"] == "mqtt" and item["chunk_kib"] == 256:
            n = propagation["settings"]["agents"]
            add(f"{n} agents (MQTT, 256 KiB chunks) all serving within 5 s",
                item["all_s_median"], 5.0, False, " s")  # fmt: skip
    sim = read_result(mode, "fleet_sim") or {}
    if sim:
        n = sim["settings"]["devices"]
        add(f"{n} simulated devices all verified within 15 s", sim["summary"]["all_s_median"],
            15.0, False, " s")  # fmt: skip
    for name, value, limit, unit in scale_targets(mode):
        add(name, value, limit, False, unit)
    footprint = read_result(mode, "footprint") or {}
    if footprint.get("import_floor"):
        add("steady RSS <= 1.15x import floor", footprint["steady_rss_over_floor"], 1.15, False)
        growth = footprint["swap_growth"] * 100
        add(f"RSS growth across {footprint['settings']['swaps']} swaps <= 5%", growth, 5.0, False,
            "%")  # fmt: skip
        add("cold start to ready < 1.5 s", footprint["cold_start_s_median"], 1.5, False, " s")
    quantization = read_result(mode, "quantization") or {}
    for row in quantization.get("models", []):
        if row["model"] in ("small", "heavy"):
            add(f"{row['model']} MLP: int8 size <= 0.3x fp32", row["size_ratio"], 0.3, False)
            add(f"{row['model']} MLP: accuracy drop <= 0.5 points",
                row["quality"]["drop_points"], 0.5, False, " pts")  # fmt: skip
    return out


def serving_tables(mode: str) -> list[str]:
    """One table per model: peers x loads."""
    serving = read_result(mode, "serving")
    if serving is None:
        return ["Serving: not run."]
    lines: list[str] = []
    summary = serving["summary"]
    concurrencies = sorted({s["concurrency"] for s in summary})
    for model_key in ("small", "heavy-fp32", "heavy-int8"):
        entries = [s for s in summary if s["model"] == model_key]
        if not entries:
            continue
        lines += ["", f"**{MODEL_LABELS[model_key]}**", ""]
        headers = ["server"]
        for c in concurrencies:
            headers += [f"c={c} req/s", f"c={c} p50 ms", f"c={c} p99 ms"]
        headers += ["errors", "CPU µs/req (c=32)", "rows/batch (c=128)"]
        rows = []
        for (peer, body), label in PEER_LABELS.items():
            found = {s["concurrency"]: s for s in entries if (s["peer"], s["body"]) == (peer, body)}
            if not found:
                if peer == "mlserver" and "mlserver" in serving.get("skipped", {}):
                    rows.append([label, "not run", *["" for _ in range(len(headers) - 2)]])
                continue
            row: list[Any] = [label]
            for c in concurrencies:
                s = found.get(c)
                row += ([f"{s['rps']:.0f}", f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}"] if s
                        else ["-", "-", "-"])  # fmt: skip
            row.append(str(sum(s["errors"] for s in found.values())))
            c32 = found.get(32)
            row.append(f"{c32['cpu_us_per_request']:.0f}" if c32 else "-")
            c128 = found.get(128)
            row.append(_fmt(c128.get("batch_rows_mean")) if c128 else "-")
            rows.append(row)
        lines += _table(headers, rows)
    lines += _diagnostics(serving)
    lines += _shadow_rows(read_result(mode, "shadow"))
    ratios = {k: v for k, v in _ratios(serving).items() if "/agent-bare_" not in k}
    if ratios:
        lines += ["", "Ratios, the agent over each peer (JSON unless named): medians of the "
                  "per-round ratios (both measured minutes apart in the same round).",
                  ""]  # fmt: skip
        rows = []
        for key, value in ratios.items():
            model_key, c, pair = key.split("/")
            numerator, _, denominator = pair.partition("_over_")
            rows.append([model_key, c.lstrip("c"), f"{numerator} / {denominator}",
                         f"{value['rps']:.2f}", f"{value['p50']:.2f}", f"{value['p99']:.2f}",
                         f"{value['cpu_per_request']:.2f}",
                         " ".join(f"{x:.2f}" for x in value["per_round_rps"])])  # fmt: skip
        lines += _table(["model", "c", "agent / peer", "req/s ratio", "p50 ratio", "p99 ratio",
                         "CPU/req ratio", "req/s ratio per round"], rows)  # fmt: skip
    if serving.get("skipped"):
        for key, reason in serving["skipped"].items():
            lines += ["", f"{key} not run: {reason.splitlines()[0]}"]
    return lines


def _diagnostics(serving: dict[str, Any]) -> list[str]:
    """The bare InferenceServer next to the agent as a device runs it, over the naive handler."""
    summary = serving["summary"]
    if not any(s["peer"].startswith("agent-") for s in summary):
        return []
    ratios = _ratios(serving)
    rows = []
    for model_key, c in sorted({(s["model"], s["concurrency"]) for s in summary
                                if s["peer"].startswith("agent-")}):  # fmt: skip
        for variant, label in DIAGNOSTIC_LABELS.items():
            found = [s for s in summary if (s["model"], s["peer"], s["body"], s["concurrency"])
                     == (model_key, variant, "json", c)]  # fmt: skip
            if not found:
                continue
            s = found[0]
            ratio = ratios.get(f"{model_key}/c{c}/{variant}_over_naive", {})
            shown = label
            if "shadow_ran_share" in s:  # the rest it dropped: the server had no idle moment
                shown = f"{label} (it ran {s['shadow_ran_share']:.0%} of the inputs)"
            rows.append([model_key, str(c), shown, f"{s['rps']:.0f}", f"{s['p50_ms']:.2f}",
                         f"{s['p99_ms']:.2f}", f"{s['cpu_us_per_request']:.0f}",
                         _fmt(s.get("batch_rows_mean")), _fmt(ratio.get("rps")),
                         _fmt(ratio.get("p50"))])  # fmt: skip
    header = ["model", "c", "server (diagnostics)", "req/s", "p50 ms", "p99 ms",
              "CPU µs/req", "rows/batch", "req/s / naive", "p50 / naive"]  # fmt: skip
    return ["", "Diagnostics: the bare InferenceServer (what serving costs without the rest of "
            "a running agent) next to `edge-agent run`.", "", *_table(header, rows)]  # fmt: skip


def _noise(shadowed: dict[str, Any], load: str) -> str:
    """The bare server's second process over its first: what the machine alone gives."""
    noise = shadowed.get(f"{load}/agent-bare-again_over_agent-bare", {}).get("p99")
    return "" if noise is None else f" (the same server twice: {noise:.2f}x)"


def _shadow_rows(shadow: dict[str, Any] | None) -> list[str]:
    """The shadow section (benchmarks/shadow.py): both servers per load, the shadow's share of
    the inputs it ran, and the median of the per-pair ratios."""
    if not shadow or not shadow.get("summary"):
        return []
    ratios = _ratios(shadow)
    rows = []
    for s in sorted(shadow["summary"], key=lambda s: (s["model"], s["concurrency"], s["peer"])):
        over_bare = f"{s['model']}/c{s['concurrency']}/{s['peer']}_over_agent-bare"
        ratio = ratios.get(over_bare, {})
        shadowed = s["peer"] == "agent-shadow"
        rows.append([s["model"], str(s["concurrency"]), DIAGNOSTIC_LABELS[s["peer"]],
                     f"{s['rps']:.0f}", f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}",
                     f"{s['cpu_us_per_request']:.0f}",
                     _fmt(s.get("shadow_ran_share")) if shadowed else "-",
                     _fmt(ratio.get("p99")) if ratio else "-"])  # fmt: skip
    header = ["model", "c", "server", "req/s", "p50 ms", "p99 ms", "CPU µs/req",
              "share shadowed", "p99 / bare (paired)"]  # fmt: skip
    pairs = shadow["settings"]["pairs"]
    return ["", f"The shadow's cost (benchmarks/shadow.py): the servers up at once, each load "
            f"going round them {pairs} times in windows next to each other; medians over the "
            "windows, and the median of the per-round p99 ratios. The bare server's second "
            "process differs in nothing: its ratio is the machine's noise.", "",
            *_table(header, rows)]  # fmt: skip


def _wire(summary: dict[str, Any]) -> str:
    """Bytes on the wire per agent and update, and their ratio to the model (older runs: -)."""
    sent = summary.get("wire_bytes_per_agent_median")
    if sent is None:
        return "-"
    return f"{sent / 1024 / 1024:.2f} MiB ({summary['wire_vs_model_median']:.3f}x)"


def propagation_tables(mode: str) -> list[str]:
    """Update propagation: real agents and simulated devices."""
    lines: list[str] = []
    propagation = read_result(mode, "propagation")
    if propagation is not None:
        n = propagation["settings"]["agents"]
        size = propagation["settings"]["model_bytes"] / 1024 / 1024
        lines += ["", f"{n} real agents, a {size:.1f} MiB model, times from the deploy command's "
                  f"start (median of {propagation['settings']['runs']} runs):", ""]  # fmt: skip
        rows = [[s["transport"], str(s["chunk_kib"]), _fmt(s["all_s_median"]),
                 " ".join(_fmt(x) for x in s["all_s_runs"]),
                 _fmt(s["all_after_return_s_median"]), _fmt(s["deploy_command_s_median"]),
                 _fmt(s["per_agent_p10_s"]), _fmt(s["per_agent_p50_s"]),
                 _fmt(s["per_agent_p90_s"]), _fmt(s["per_agent_max_s"]),
                 _wire(s)]
                for s in propagation["summary"]]  # fmt: skip
        lines += _table(["transport", "chunk KiB", f"all {n} serving, s", "runs, s",
                         "after deploy returned, s", "deploy command, s", "per agent p10",
                         "p50", "p90", "max", "bytes to each agent"], rows)  # fmt: skip
    sim = read_result(mode, "fleet_sim")
    if sim is not None:
        s = sim["summary"]
        st = sim["settings"]
        lines += ["", f"{st['devices']} simulated devices ({st['worker_processes']} processes, "
                  f"{st['chunk_kib']} KiB chunks, stores in {st['state_dirs']}): all verified "
                  f"{_fmt(s['all_s_median'])} s after the deploy command started (median of "
                  f"{st['runs']}; runs {' '.join(_fmt(x) for x in s['all_s_runs'])} s); the "
                  f"deploy command itself took {_fmt(s['deploy_command_s_median'])} s; "
                  f"per-device median {_fmt(s['p50_s_median'])} s; devices connected in "
                  f"{_fmt(sim['connect_s'])} s."]  # fmt: skip
    return lines or ["Propagation: not run."]


def footprint_table(mode: str) -> list[str]:
    """Memory and cold start."""
    fp = read_result(mode, "footprint")
    if fp is None or "import_floor" not in fp:
        return ["Footprint: not run."]
    floor = fp["import_floor"]
    rows = [
        ["import floor (numpy, onnxruntime, aiohttp, paho-mqtt, cryptography + model)",
         _fmt(floor["rss_mib"], 1), _fmt(floor["pss_mib"], 1), "1.00"],
        ["agent idle, small model served", _fmt(fp["idle"]["rss_mib"], 1),
         _fmt(fp["idle"]["pss_mib"], 1), f"{fp['idle']['rss_mib'] / floor['rss_mib']:.2f}"],
        [f"agent after {fp['settings']['requests']} requests",
         _fmt(fp["after_requests"]["rss_mib"], 1), _fmt(fp["after_requests"]["pss_mib"], 1),
         f"{fp['after_requests']['rss_mib'] / floor['rss_mib']:.2f}"],
        [f"agent after {fp['settings']['swaps']} swaps", _fmt(fp["after_swaps"]["rss_mib"], 1),
         _fmt(fp["after_swaps"]["pss_mib"], 1),
         f"{fp['after_swaps']['rss_mib'] / floor['rss_mib']:.2f}"],
        ["agent idle after a restart", _fmt(fp["after_restart_idle"]["rss_mib"], 1),
         _fmt(fp["after_restart_idle"]["pss_mib"], 1),
         f"{fp['after_restart_idle']['rss_mib'] / floor['rss_mib']:.2f}"],
    ]  # fmt: skip
    lines = _table(["process", "RSS MiB", "PSS MiB", "RSS / floor"], rows)
    cold = " ".join(_fmt(c) for c in fp["cold_start_s"])
    median_cold = _fmt(fp["cold_start_s_median"])
    lines += ["", f"Cold start to `/v2/health/ready` = 200: median {median_cold}"
              f" s (runs: {cold}); the import floor alone takes {_fmt(floor['ready_s'])} s. "
              f"RSS change across the swaps: {fp['swap_growth'] * 100:+.1f}% (first to last swap "
              f"{fp['swap_growth_first_to_last'] * 100:+.1f}%)."]  # fmt: skip
    return lines


def quantization_table(mode: str) -> list[str]:
    """fp32 vs int8."""
    q = read_result(mode, "quantization")
    if q is None:
        return ["Quantization: not run."]
    rows = []
    for r in q["models"]:
        quality = r["quality"]
        lat1, lat64 = r["latency_us"]["batch1"], r["latency_us"]["batch64"]
        rows.append([
            r["model"], f"{r['fp32_bytes'] / 1024:.0f} / {r['int8_bytes'] / 1024:.0f}",
            f"{r['size_ratio']:.2f}", f"{lat1['fp32']:.1f} / {lat1['int8']:.1f}",
            f"{lat64['fp32']:.0f} / {lat64['int8']:.0f}",
            f"{r['speedup_batch1']:.2f}x / {r['speedup_batch64']:.2f}x",
            f"{quality['metric']} {quality['fp32']} / {quality['int8']}",
            f"{quality['drop_points']:+.2f}", f"{quality['agreement'] * 100:.1f}%",
        ])  # fmt: skip
    return _table(["model", "size KiB fp32 / int8", "ratio", "1 row µs fp32 / int8",
                   "64 rows µs fp32 / int8", "int8 speed-up 1 / 64", "quality fp32 / int8",
                   "drop (points)", "agreement"], rows)  # fmt: skip


def costs_table(mode: str) -> list[str]:
    """The agent's request path, step by step (benchmarks/agent_costs.py)."""
    costs = read_result(mode, "agent_costs")
    if costs is None:
        return []
    rows = [[name, f"{value:.1f}"] for name, value in costs["us_per_call"].items()]
    return ["", "The agent's request path step by step, in-process on CPU "
            f"{costs['cpus']} (µs per call, median of blocks; [agent_costs.py](agent_costs.py)):",
            "", *_table(["step", "µs"], rows)]  # fmt: skip


def machine_lines(mode: str) -> list[str]:
    """Where and with what."""
    info = read_result(mode, "machine")
    if info is None:
        return []
    m = info["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['cores']} cores ({', '.join(m['simd'])}), "
        f"{m['memory_gib']} GiB, Linux {m['kernel']}, Python {m['python']}; load average at "
        f"start {' '.join(str(x) for x in m['load_average_at_start'])} (shared machine). "
        f"Run {info['started']} on commit {info['commit'][:12]}, "
        f"`{info['command']}`, wall time {info['wall_s']:.0f} s "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in info['section_wall_s'].items())})."
    ]
    for rerun in info.get("reruns", []):
        load = " ".join(str(x) for x in rerun["load_average_at_start"])
        lines += ["", f"Rerun {rerun['started']} on commit {rerun['commit'][:12]}: "
                  f"{', '.join(rerun['sections'])} (`--only`), wall time {rerun['wall_s']:.0f} s, "
                  f"load average at start {load}."]  # fmt: skip
    lines += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()) + "."]
    if info.get("failures"):
        for name, error in info["failures"].items():
            lines += ["", f"**{name} failed**: {error}"]
    return lines


def render(mode: str) -> str:
    """The generated block for one mode."""
    lines = machine_lines(mode)
    lines += ["", "#### Targets", ""]
    lines += _table(
        ["target", "measured", "status"],
        [[t["target"], t["measured"], t["status"]] for t in targets(mode)],
    )
    lines += ["", "#### 1. Serving", "", *serving_tables(mode), *costs_table(mode)]
    lines += ["", "#### 2. Update propagation", "", *propagation_tables(mode), *scale_lines(mode)]
    lines += ["", "#### 3. Footprint", "", *footprint_table(mode)]
    lines += ["", "#### 4. Quantization", "", *quantization_table(mode)]
    return "\n".join(lines).strip() + "\n"


def update_readme(mode: str) -> None:
    """Replace the block between this mode's markers in README.md."""
    start, end = f"<!-- results:{mode}:start -->", f"<!-- results:{mode}:end -->"
    text = README.read_text()
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    block = f"{start}\n{render(mode)}{end}"
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text += f"\n{block}\n"
    README.write_text(text)


if __name__ == "__main__":
    import sys

    update_readme(sys.argv[1] if len(sys.argv) > 1 else "full")
