"""`make demo` end to end: scripts/demo.py runs the whole story and leaves no process behind.

`make demo` would first run `make install`; the test runs the script with this virtualenv's
Python directly. No timing is asserted: the demo prints its own durations.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "demo.py"
PROGRAMS = ("model-registry", "edge-agent")


def recorded_processes(work: Path) -> list[tuple[int, str]]:
    """(pid, name) of every process the demo recorded in logs/pids.txt."""
    pids = work / "logs" / "pids.txt"
    lines = pids.read_text().splitlines() if pids.exists() else []
    return [(int(pid), name) for pid, name, _command in (line.split("\t", 2) for line in lines)]


def still_running(pid: int) -> bool:
    """Whether `pid` is a live (not zombie) process of ours: model-registry or edge-agent."""
    proc = Path(f"/proc/{pid}")
    try:
        cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    # A recycled pid belongs to another program; a zombie is already dead.
    return state != "Z" and any(program in cmdline for program in PROGRAMS)


def check_nothing_left(work: Path) -> list[tuple[int, str]]:
    """The recorded processes still running; they are killed so no test leaks them."""
    leftovers = [(pid, name) for pid, name in recorded_processes(work) if still_running(pid)]
    for pid, _name in leftovers:
        os.kill(pid, signal.SIGKILL)
    return leftovers


@pytest.mark.timeout(900)
def test_demo_runs_the_whole_story_and_cleans_up(tmp_path: Path) -> None:
    work = tmp_path / "demo-work"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--dir", str(work)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=840,
        check=False,
    )
    output = result.stdout + result.stderr
    leftovers = check_nothing_left(work)
    assert result.returncode == 0, output
    assert leftovers == [], f"still running after the demo: {leftovers}\n{output}"
    assert len(recorded_processes(work)) >= 3, "the registry and two agents are recorded"

    for step in range(1, 17):
        assert re.search(rf"^\[\s*{step}/16\] .* \d+\.\d s$", output, re.MULTILINE), output
    for device in ("cam-1", "cam-2"):
        assert f"{device} serves classifier v1 on http://127.0.0.1:" in output
        assert f"{device} serves classifier v2" in output
    # push's own output, as the command prints it
    assert re.search(r"^\s+Pushed classifier version 2, signed with the release key$", output, re.M)
    assert re.search(r"^\s+size\s+\d+\.\d KiB int8, from \d+\.\d KiB float32 ", output, re.M)
    assert re.search(r"^\s+accuracy gate\s+passed \(limit 1\.0 point\)$", output, re.M), output
    assert re.search(r"^\s+HTTP/1\.1 200 OK$", output, re.MULTILINE), output
    assert re.search(r"^\s+model_version 1$", output, re.MULTILINE), "tritonclient's answer"
    swap = re.search(r"(\d+) requests during the swap, 0 failed; answered by v1: \d+, v2", output)
    assert swap, output
    assert int(swap.group(1)) > 0
    listing = re.findall(r"^\s+(cam-[12])\s+lab\s+online\s+classifier\s+2\s+2\s", output, re.M)
    assert sorted(listing) == ["cam-1", "cam-2"], output
    assert "every process the demo started has stopped" in output
    assert re.search(r"dashboard http://127\.0\.0\.1:\d+/ui/", output), output
    assert "model-registry devices list --home registry-home" in output

    # What the user keeps: the home, both bundles with their installed model, the logs.
    assert (work / "registry-home" / "registry.db").is_file()
    for device in ("cam-1", "cam-2"):
        assert (work / "devices" / device / "device.toml").is_file()
        assert (work / "devices" / device / "state").is_dir()
    for log in ("registry.log", "cam-1.log", "cam-2.log", "commands.log"):
        assert (work / "logs" / log).is_file()
    assert not (work / "registry-home" / "serve.json").exists(), "the registry stopped cleanly"


@pytest.mark.timeout(600)
def test_ctrl_c_stops_every_process_the_demo_started(tmp_path: Path) -> None:
    work = tmp_path / "demo-work"
    demo = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--dir", str(work)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        for line in demo.stdout:  # wait until both agents run next to the registry
            lines.append(line)
            if "cam-2 agent running" in line:
                break
        else:
            pytest.fail("the demo ended before its agents started:\n" + "".join(lines))
        time.sleep(0.5)
        demo.send_signal(signal.SIGINT)  # what Ctrl-C delivers to the demo
        rest, _ = demo.communicate(timeout=300)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    output = "".join(lines) + rest
    leftovers = check_nothing_left(work)
    assert demo.returncode == 128 + signal.SIGINT, output
    assert "Interrupted by SIGINT: stopping everything the demo started" in output
    assert leftovers == [], f"still running after Ctrl-C: {leftovers}\n{output}"
    assert {name for _pid, name in recorded_processes(work)} >= {"registry", "cam-1", "cam-2"}


@pytest.mark.timeout(900)
def test_keep_leaves_the_dashboard_up_until_ctrl_c(tmp_path: Path) -> None:
    work = tmp_path / "demo-work"
    demo = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--dir", str(work), "--keep"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        url = token = ""
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("The dashboard: "):
                url = line.split(": ", 1)[1].strip()
            if "sign in with this viewer token: " in line:
                token = line.rsplit(": ", 1)[1].strip()
                break
        else:
            pytest.fail("the demo ended without keeping the dashboard up:\n" + "".join(lines))
        page = urllib.request.urlopen(url, timeout=30)  # noqa: S310 - the demo's local URL
        assert "Content-Security-Policy" in page.headers
        signed_in = urllib.request.Request(  # noqa: S310
            url.replace("/ui/", "/ui/session"),
            data=json.dumps({"token": token}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(signed_in, timeout=30) as answer:  # noqa: S310
            assert json.loads(answer.read())["role"] == "viewer"
            cookie = answer.headers["Set-Cookie"].split(";", 1)[0]
        fleet = urllib.request.Request(  # noqa: S310
            url.replace("/ui/", "/v1/fleet/devices"), headers={"Cookie": cookie}
        )
        with urllib.request.urlopen(fleet, timeout=30) as answer:  # noqa: S310
            devices = [d["device_id"] for d in json.loads(answer.read())["devices"]]
        assert devices == ["cam-1", "cam-2"]
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=300)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    output = "".join(lines) + rest
    leftovers = check_nothing_left(work)
    assert demo.returncode == 0, output
    assert "Ctrl-C: shutting down" in output
    assert leftovers == [], f"still running after Ctrl-C: {leftovers}\n{output}"
