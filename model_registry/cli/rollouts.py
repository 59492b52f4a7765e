"""`model-registry rollout start|status|list|pause|resume|abort` (docs/registry.md, "Rollouts").

`start` builds the policy client-side (a `--policy FILE.toml`, then the flags over it), so a
mistake is named before anything is sent; the registry checks it again. `status --wait` (and
`start --wait`) shows each wave with a progress bar until the rollout completes, halts, is
aborted, or waits for `resume`; on a terminal the block is redrawn in place, elsewhere a line
is printed when something changed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from edge_common.toml_file import ConfigFileError, load_toml
from model_registry.cli.display import printable
from model_registry.cli.follow import EXIT_INTERRUPTED, UP_AND_CLEAR
from model_registry.cli.remote import _client, _print
from model_registry.errors import InvalidInputError, RegistryError
from model_registry.rollouts.policy import RolloutPolicy, merged, parse_policy

POLL_INTERVAL_S = 1.0
BAR_WIDTH = 20
FINAL = frozenset({"completed", "halted", "aborted"})
MOVING_STATUSES = ("probation", "downloading", "pending")
FAILED_STATUSES = ("failed", "rolled_back", "silent")


class RolloutStoppedError(RegistryError):
    """A followed rollout halted or was aborted."""


def start(args: argparse.Namespace) -> int:
    """model-registry rollout start NAME VERSION --group G [...]."""
    policy = _policy(args)
    client = _client(args)
    body = {"model": args.name, "version": args.version, "group": args.group}
    if args.force:
        body["force"] = True
    status = client.post_json("/v1/rollouts", {**body, "policy": policy.to_dict()})
    if args.wait:
        return _follow(args, client, status["id"])
    _show(args, status)
    return 0


def _policy(args: argparse.Namespace) -> RolloutPolicy:
    base = RolloutPolicy()
    if args.policy:
        path = Path(args.policy)
        try:
            base = parse_policy(load_toml(path, limit=64 * 1024), where=str(path))
        except ConfigFileError as e:
            raise InvalidInputError(f"{path}: {e}") from e
    flags = {"steps": args.steps, "soak": args.soak, "canary": args.canary}
    overrides: dict[str, Any] = {k: v for k, v in flags.items() if v is not None}
    if args.manual:
        overrides["manual"] = True
    return merged(base, **overrides)


def status(args: argparse.Namespace) -> int:
    """model-registry rollout status ID [--wait]."""
    client = _client(args)
    if args.wait:
        return _follow(args, client, args.id)
    _show(args, client.get(f"/v1/rollouts/{args.id}"))
    return 0


def listing(args: argparse.Namespace) -> int:
    """model-registry rollout list [--model NAME]."""
    path = "/v1/rollouts" + (f"?model={args.model}" if args.model else "")
    data = _client(args).get(path)
    rows = [
        [r["id"], r["state"], r["model"], r["version"], r["group"], f"{r['wave']}",
         r["devices_moved"], r["created"], r["created_by"], (r["halt"] or {}).get("reason")]
        for r in data["rollouts"]
    ]  # fmt: skip
    headers = ["ID", "STATE", "MODEL", "VERSION", "GROUP", "WAVE", "MOVED", "CREATED", "BY", "WHY"]
    _print(
        args, data, rows, headers, "No rollouts yet: start one with model-registry rollout start"
    )
    return 0


def pause(args: argparse.Namespace) -> int:
    """model-registry rollout pause ID."""
    return _act(args, "pause")


def resume(args: argparse.Namespace) -> int:
    """model-registry rollout resume ID."""
    return _act(args, "resume")


def abort(args: argparse.Namespace) -> int:
    """model-registry rollout abort ID."""
    return _act(args, "abort")


def _act(args: argparse.Namespace, action: str) -> int:
    _show(args, _client(args).post_json(f"/v1/rollouts/{args.id}/{action}", {}))
    return 0


def _show(args: argparse.Namespace, status: dict[str, Any]) -> None:
    if args.json:
        print(json.dumps(status, indent=2))
        return
    for line in status_lines(status, decisions=5):
        print(printable(line))


def _follow(args: argparse.Namespace, client: Any, rollout_id: int) -> int:
    """Poll until the rollout is final or waits for a human; 1 if it halted or was aborted."""
    view = RolloutView(sys.stdout) if not args.json else None
    current: dict[str, Any] = {}
    try:
        while True:
            current = client.get(f"/v1/rollouts/{rollout_id}")
            if view is not None:
                view.update(current)
            if current["state"] in FINAL or current["state"] in ("waiting", "paused"):
                break
            time.sleep(POLL_INTERVAL_S)
    except KeyboardInterrupt:
        print(
            f"model-registry rollout: interrupted; rollout {rollout_id} goes on without us. "
            f"Follow it again with: model-registry rollout status {rollout_id} --wait",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    if args.json:
        print(json.dumps(current, indent=2))
    if current["state"] in ("halted", "aborted"):
        reason = (current.get("halt") or {}).get("reason") or current["state"]
        raise RolloutStoppedError(f"rollout {rollout_id} {current['state']}: {reason}")
    return 0


def status_lines(status: dict[str, Any], *, decisions: int = 0) -> list[str]:
    """The rollout, one line per wave with a progress bar, its halt, its latest decisions."""
    moved = status["devices_moved"]
    lines = [
        f"Rollout {status['id']}: {status['model']} version {status['version']} to group "
        f"{status['group']}, {status['state']} ({moved} device(s) moved)",
    ]
    total = len(status["waves"])
    for wave in status["waves"]:
        lines.append(wave_line(wave, total))
    gates = [gate_text(g) for g in status.get("gates") or []]
    if gates:
        lines.append(f"  gates now: {'; '.join(gates)}")
    halt = status.get("halt")
    if halt:
        lines.append(f"  {status['state']}: {halt.get('reason')}")
    for decision in status["decisions"][-decisions:] if decisions else []:
        lines.append(f"    {decision['at']}  {decision['actor']}  {decision['action']}: "
                     f"{decision['reason']}")  # fmt: skip
    return lines


def gate_text(gate: dict[str, Any]) -> str:
    """`latency 1.2 (limit 2) held`, `latency waits (3 new, 40 replaced answers, ...)`."""
    if gate["held"] is None:
        return f"{gate['gate']} {'waits' if gate.get('waits') else 'not judged'} ({gate['detail']})"
    measured = "-" if gate["measured"] is None else f"{gate['measured']:.3g}"
    verdict = "held" if gate["held"] else "BROKEN"
    return f"{gate['gate']} {measured} (limit {gate['limit']:g}) {verdict}"


def wave_line(wave: dict[str, Any], total: int) -> str:
    """`  wave 2/3   25%   2 devices  [##########----------] 1/2 activated, soaking`."""
    count = len(wave["devices"])
    done = wave["activated"] if wave["state"] != "planned" else 0
    filled = BAR_WIDTH * done // count if count else BAR_WIDTH * (wave["state"] == "passed")
    bar = "#" * filled + "-" * (BAR_WIDTH - filled)
    counts = wave["counts"]
    busy = [f"{counts[s]} {s.replace('_', ' ')}" for s in (*MOVING_STATUSES, *FAILED_STATUSES)
            if counts.get(s)]  # fmt: skip
    what = wave["state"] + (f": {', '.join(busy)}" if busy else "")
    return (
        f"  wave {wave['index']}/{total}  {wave['percent']:>6g}%  {count:>4} device(s)  "
        f"[{bar}] {done}/{count} activated, {what}"
    )


class RolloutView:
    """Shows a followed rollout: redrawn in place on a terminal, changed lines elsewhere."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._terminal = out.isatty()
        self._drawn = 0
        self._shown: list[str] = []

    def update(self, status: dict[str, Any]) -> None:
        """Show the rollout as it is now."""
        lines = status_lines(status, decisions=3)
        if self._terminal:
            if self._drawn:
                self._out.write(UP_AND_CLEAR.format(lines=self._drawn))
            self._out.writelines(printable(line) + "\n" for line in lines)
            self._drawn = len(lines)
        else:
            for line in lines:
                if line not in self._shown:
                    self._out.write(printable(line) + "\n")
            self._shown = lines
        self._out.flush()
