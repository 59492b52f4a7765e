"""A served registry under hostile input, seen from outside: its memory and its CLI's output.

`model-registry serve` runs as a subprocess on a mosquitto of this module; a device publishes
with paho, a publisher pushes with the CLI, and the operator reads `model-registry devices
list`, which must show every character a device sent without any reaching the terminal raw.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_protocol import Topics, utc_now
from edge_protocol.messages import event_payload, state_payload
from model_registry.storage import SQLiteStorage
from tests.registry.hostile_input import zip_bomb
from tests.support.broker import Broker, start_plain_broker
from tests.support.models import ModelSet
from tests.support.registry import RegistryProcess, cli, cli_json

TOPICS = Topics()
SHA = "d" * 64
ESC = "\x1b"
CLEAR = f"{ESC}[2J{ESC}[H"
FAKE_ROW = "\r\nghost    lab    online  clf    1  1  idle  OK"
WAIT_S = 60.0
# Any C0 control but the newline ending each line, DEL, any C1 control (CSI is 0x9b), and the
# bidi overrides and isolates.
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A mosquitto of this module alone: no other registry's session on it."""
    broker = start_plain_broker(tmp_path_factory.mktemp("hostile-broker"))
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[RegistryProcess]:
    """`model-registry serve` of a fresh home on the module's broker."""
    home = tmp_path_factory.mktemp("hostile") / "home"
    cli("init", "--home", str(home))
    registry = RegistryProcess(home, ("--mqtt-url", broker.url))
    registry.start()
    yield registry
    registry.stop()


def _home(registry: RegistryProcess) -> tuple[str, str]:
    return ("--home", str(registry.home))


def _high_water_bytes(pid: int) -> int:
    """The process's peak resident set size (VmHWM), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc/PID/status")


def test_a_zip_bomb_eval_set_is_refused_without_being_expanded(
    served: RegistryProcess, onnx_models: ModelSet, tmp_path: Path
) -> None:
    assert served.process is not None
    model = str(onnx_models.classifier.onnx_path)
    cli("push", model, "--name", "warm-up", *_home(served))  # the build path's own peak first
    before = _high_water_bytes(served.process.pid)
    bomb = tmp_path / "bomb.npz"
    bomb.write_bytes(zip_bomb(320))
    assert bomb.stat().st_size < 400 * 1024, "a few hundred KiB that expand to 320 MiB"
    result = cli("push", model, "--name", "bombed", "--quantize", "int8", "--eval", str(bomb),
                 *_home(served), check=False)  # fmt: skip
    assert result.returncode == 1
    assert "expands to" in result.stderr
    assert "bombed" not in [m["name"] for m in cli_json("models", *_home(served))["models"]]
    grown = _high_water_bytes(served.process.pid) - before
    assert grown < 64 * 1024 * 1024, f"the registry's peak memory grew by {grown} bytes"


def _publish(broker: Broker, messages: list[tuple[str, bytes]]) -> None:
    with broker.connect() as client:
        for topic, payload in messages:
            client.publish(topic, payload)


def _state(device: str, phase: str = "idle", model: str = "clf", **extra: object) -> bytes:
    entry = {"active": {"version": 1, "sha256": SHA}, "phase": phase, **extra}
    return state_payload(device, agent_version="0.1.0", models={model: entry}, trust={})


def _listed(registry: RegistryProcess, device: str) -> dict[str, object] | None:
    devices = cli_json("devices", "list", *_home(registry))["devices"]
    return next((d for d in devices if d["device_id"] == device), None)


def _until_online(registry: RegistryProcess, device: str) -> dict[str, object]:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        listed = _listed(registry, device)
        if listed is not None and listed["online"]:
            return listed
        time.sleep(0.1)
    raise AssertionError(f"{device} never came online")


def test_devices_list_shows_no_terminal_control_codes_a_device_sent(
    served: RegistryProcess, broker: Broker, tmp_path: Path
) -> None:
    cli("devices", "add", "tty-dev", "--group", "lab", "--out", str(tmp_path / "b"),
        *_home(served))  # fmt: skip
    hostile = [
        _state("tty-dev", phase=f"idle{CLEAR}"),
        _state("tty-dev", phase=f"idle{FAKE_ROW}"),
        _state("tty-dev", model=f"clf{CLEAR}"),
        _state("tty-dev", last_error={"text": CLEAR}),
        event_payload("tty-dev", "rejected", model="clf", version=1, reason=f"x{CLEAR}"),
    ]
    # Last, a state that passes: its last_error is human text, kept (cut to length).
    good = _state("tty-dev", phase="failed", last_error=f"load failed{CLEAR}\u202eKO")
    rejected = event_payload(
        "tty-dev", "rejected", model="clf", version=1, reason="chunk_hash", detail=CLEAR
    )
    messages = [(TOPICS.state("tty-dev"), m) for m in hostile[:4]]
    messages += [(TOPICS.events("tty-dev"), hostile[4]), (TOPICS.events("tty-dev"), rejected)]
    _publish(broker, [*messages, (TOPICS.state("tty-dev"), good)])

    listed = _until_online(served, "tty-dev")
    assert listed["models"] == {
        "clf": {"assigned": None, "active": 1, "phase": "failed",
                "last_error": f"load failed{CLEAR}\u202eKO"},
    }  # fmt: skip
    table = cli("devices", "list", *_home(served)).stdout
    assert RAW_CONTROL.search(table) is None, repr(table)
    row = next(line for line in table.splitlines() if line.startswith("tty-dev"))
    assert "failed" in row
    assert "rejected chunk_hash (clf v1)" in row
    assert "ghost" not in table
    assert "OK" not in table


def test_what_an_older_registry_stored_is_shown_escaped(
    served: RegistryProcess, tmp_path: Path
) -> None:
    """A state stored before the field rules existed still cannot steer the terminal."""
    cli("devices", "add", "legacy", "--group", "lab", "--out", str(tmp_path / "b"),
        *_home(served))  # fmt: skip
    state = {
        "online": True,
        "agent_version": f"0.1{CLEAR}",
        "models": {f"clf{CLEAR}": {"active": {"version": 1}, "phase": f"idle{FAKE_ROW}"}},
    }
    asyncio.run(_store_state(served.home / "registry.db", "legacy", state))
    table = cli("devices", "list", *_home(served)).stdout
    assert RAW_CONTROL.search(table) is None, repr(table)
    assert "clf\\x1b[2J\\x1b[H" in table
    assert "idle\\x0d\\x0aghost" in table, "the fake row is one cell of the real one"
    assert not any(line.startswith("ghost") for line in table.splitlines())
    listed = json.loads(cli("devices", "list", "--json", *_home(served)).stdout)
    assert any(d["device_id"] == "legacy" for d in listed["devices"])


async def _store_state(database: Path, device: str, state: dict[str, object]) -> None:
    async with SQLiteStorage(database) as storage:
        await storage.record_state(device, state, True, utc_now())
