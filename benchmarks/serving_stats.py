"""The serving results summed up: medians over rounds, and ratios of the agent to each peer.

Every ratio is taken within one round (both servers measured minutes apart on the same
machine state) and the median of the per-round ratios is reported.
"""

from __future__ import annotations

from typing import Any

from benchmarks.common import median

# (name in the ratio keys, peer, body): numerators, then what each is divided by.
Series = tuple[str, str, str]
AGENT: Series = ("agent", "agent", "json")
COMPARISONS: list[tuple[Series, list[Series]]] = [
    (AGENT, [("naive", "naive", "json"), ("fastapi", "fastapi", "json"),
             ("mlserver", "mlserver", "json"), ("constant", "constant", "json")]),
    (("agent_binary", "agent", "binary"), [("naive", "naive", "json")]),
    (("agent_grpc", "agent", "grpc"), [("mlserver_grpc", "mlserver", "grpc"),
                                       ("naive", "naive", "json")]),
    (("agent-bare", "agent-bare", "json"), [("naive", "naive", "json")]),
    (("agent-shadow", "agent-shadow", "json"), [("agent-bare", "agent-bare", "json")]),
    (("agent-bare-again", "agent-bare-again", "json"), [("agent-bare", "agent-bare", "json")]),
]  # fmt: skip


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Medians over rounds for every (model, peer, body, concurrency)."""
    groups: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {}
    for entry in runs:
        key = (entry["model"], entry["peer"], entry["body"], entry["concurrency"])
        groups.setdefault(key, []).append(entry)
    out = []
    for (model_key, peer, body, c), entries in groups.items():
        item = {
            "model": model_key, "peer": peer, "body": body, "concurrency": c,
            "rounds": len(entries),
            "rps": round(median([e["rps"] for e in entries]), 1),
            "p50_ms": round(median([e["p50_ms"] for e in entries]), 3),
            "p99_ms": round(median([e["p99_ms"] for e in entries]), 3),
            "errors": sum(e["errors"] for e in entries),
            "requests": sum(e["requests"] for e in entries),
            "cpu_us_per_request": round(median([e["cpu_us_per_request"] for e in entries]), 1),
        }  # fmt: skip
        rows = [e["batch_rows_mean"] for e in entries if "batch_rows_mean" in e]
        if rows:
            item["batch_rows_mean"] = round(median(rows), 2)
        shadowed = [e["shadow_ran_share"] for e in entries if "shadow_ran_share" in e]
        if shadowed:
            item["shadow_ran_share"] = round(median(shadowed), 3)
        out.append(item)
    return out


def _pick(runs: list[dict[str, Any]], r: int, model_key: str, series: Series, c: int) -> Any:
    _, peer, body = series
    for entry in runs:
        if (entry["round"], entry["model"], entry["peer"], entry["body"], entry["concurrency"]) == (
            r, model_key, peer, body, c,
        ):  # fmt: skip
            return entry
    return None


def ratios(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """`model/cC/NUM_over_DEN` for every comparison measured: medians of per-round ratios."""
    out: dict[str, Any] = {}
    rounds = sorted({e["round"] for e in runs})
    keys = sorted({(e["model"], e["concurrency"]) for e in runs})
    for model_key, c in keys:
        for numerator, denominators in COMPARISONS:
            for denominator in denominators:
                rps, p50, p99, cpu = [], [], [], []
                for r in rounds:
                    agent = _pick(runs, r, model_key, numerator, c)
                    other = _pick(runs, r, model_key, denominator, c)
                    if agent is None or other is None or other["rps"] == 0:
                        continue
                    rps.append(agent["rps"] / other["rps"])
                    p50.append(agent["p50_ms"] / other["p50_ms"])
                    p99.append(agent["p99_ms"] / other["p99_ms"])
                    cpu.append(agent["cpu_us_per_request"] / max(0.1, other["cpu_us_per_request"]))
                if rps:
                    out[f"{model_key}/c{c}/{numerator[0]}_over_{denominator[0]}"] = {
                        "rps": round(median(rps), 3),
                        "p50": round(median(p50), 3),
                        "p99": round(median(p99), 3),
                        "cpu_per_request": round(median(cpu), 3),
                        "per_round_rps": [round(x, 3) for x in rps],
                    }
    return out
