"""Section 1's contestants: the models served, the request bodies, and how each server starts."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from edge_common.processes import free_port

from benchmarks import grpc_load
from benchmarks.common import (
    BENCH,
    PYTHON,
)
from benchmarks.models import Model, model
from benchmarks.serving_device import ServingDevices

MLSERVER_VENV = BENCH / ".venv-mlserver"
MLSERVER_FAILED = BENCH / ".venv-mlserver.failed"


@dataclass(frozen=True)
class Served:
    """A model as the servers see it."""

    key: str  # small, heavy-fp32, heavy-int8
    name: str  # the model name in the URL
    path: Path
    row: list[float]
    input_name: str


def served_models(keys: tuple[str, ...]) -> list[Served]:
    """The model files and one request row each."""
    out = []
    for key in keys:
        base = key.split("-")[0]
        built: Model = model(base)
        path = built.fp32_path if key.endswith("fp32") else built.path
        import onnxruntime as ort  # noqa: PLC0415

        input_name = ort.InferenceSession(str(path)).get_inputs()[0].name
        row = [round(float(v), 6) for v in built.X_eval[0]]
        out.append(Served(key, base, path, row, input_name))
    return out


@dataclass
class Bodies:
    """Request bodies written to files for wrk."""

    json_file: Path
    binary_file: Path
    binary_header_length: int
    grpc_file: Path


def write_bodies(served: Served, directory: Path) -> Bodies:
    """The OIP v2 JSON body, and the binary-extension body with binary outputs."""
    directory.mkdir(parents=True, exist_ok=True)
    n = len(served.row)
    json_body = {"inputs": [{"name": served.input_name, "datatype": "FP32", "shape": [1, n],
                             "data": served.row}]}  # fmt: skip
    json_file = directory / f"{served.key}.json"
    json_file.write_text(json.dumps(json_body))
    header = json.dumps({
        "inputs": [{"name": served.input_name, "datatype": "FP32", "shape": [1, n],
                    "parameters": {"binary_data_size": 4 * n}}],
        "parameters": {"binary_data_output": True},
    }).encode()  # fmt: skip
    binary_file = directory / f"{served.key}.bin"
    binary_file.write_bytes(header + np.asarray(served.row, dtype="<f4").tobytes())
    return Bodies(json_file, binary_file, len(header), grpc_load.write_body(served, directory))


Launched = tuple[list[str], dict[str, str]]  # argv and extra environment of a server


@dataclass
class Peer:
    """How to start one server and which bodies it takes."""

    key: str
    label: str
    bodies: tuple[str, ...]
    launch: Callable[[Served, int, Path, int], Launched]
    available: Callable[[], str | None] = lambda: None  # the reason it cannot run, or None
    infer_path: Callable[[Served], str] = field(default=lambda s: f"/v2/models/{s.name}/infer")
    only: dict[str, tuple[int, ...]] | None = None  # model -> loads, for diagnostics


def _bare_agent(served: Served, port: int, work: Path, grpc_port: int) -> Launched:
    argv = [PYTHON, "-m", "benchmarks.peers.agent_server", str(served.path), served.name, str(port)]
    return argv, {}


def _shadowed_agent(served: Served, port: int, work: Path, grpc_port: int) -> Launched:
    argv, env = _bare_agent(served, port, work, grpc_port)
    return [*argv, "--shadow"], env


def device_agent(devices: ServingDevices) -> Callable[..., tuple[list[str], dict[str, str]]]:
    def launch(
        served: Served, port: int, work: Path, grpc_port: int
    ) -> tuple[list[str], dict[str, str]]:
        return devices.argv(served, port, grpc_port), {}

    return launch


def _naive(served: Served, port: int, work: Path, grpc_port: int) -> Launched:
    return [PYTHON, "-m", "benchmarks.peers.naive_aiohttp", str(served.path), str(port)], {}


def _fastapi(served: Served, port: int, work: Path, grpc_port: int) -> Launched:
    return [PYTHON, "-m", "benchmarks.peers.fastapi_app", str(port)], {
        "BENCH_MODEL": str(served.path)
    }


def _constant(served: Served, port: int, work: Path, grpc_port: int) -> Launched:
    return [PYTHON, "-m", "benchmarks.peers.constant", str(port)], {}


def _mlserver(served: Served, port: int, work: Path, grpc_port: int) -> Launched:
    folder = work / f"mlserver-{served.key}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copy(BENCH / "peers" / "mlserver_runtime.py", folder / "mlserver_runtime.py")
    settings = {
        "debug": False,  # its default (True) logs every request
        "parallel_workers": 0,  # inference in the server process, like every other peer
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": grpc_port,
        "metrics_port": free_port(),
        "load_models_at_startup": True,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": served.name,
        "implementation": "mlserver_runtime.OnnxRuntimeModel",
        "parameters": {"uri": str(served.path)},
    }
    (folder / "model-settings.json").write_text(json.dumps(model_settings))
    return [str(MLSERVER_VENV / "bin" / "mlserver"), "start", str(folder)], {}


def _mlserver_missing() -> str | None:
    if (MLSERVER_VENV / "bin" / "mlserver").exists():
        return None
    if MLSERVER_FAILED.exists():
        return MLSERVER_FAILED.read_text().strip()
    return "MLServer is not installed (benchmarks/ensure-mlserver.sh was not run)"


PEERS = {
    # The launch of "agent" needs the registry and broker: run() gives it (_device_agent).
    "agent": Peer("agent", "edge agent", ("json", "binary", "grpc"), _bare_agent),
    "naive": Peer("naive", "naive aiohttp", ("json",), _naive),
    "fastapi": Peer("fastapi", "FastAPI + uvicorn", ("json",), _fastapi),
    "mlserver": Peer("mlserver", "MLServer", ("json", "grpc"), _mlserver, _mlserver_missing),
    "constant": Peer("constant", "aiohttp constant (ceiling)", ("json",), _constant),
}
# Diagnostics, not peers: ModelRepository + InferenceServer alone in a bare process, to tell
# the cost of serving from what the rest of a running agent (MQTT, telemetry) adds to it.
DIAGNOSTIC_LOADS = {"small": (1, 32), "heavy-int8": (128,)}
PEERS["agent-bare"] = Peer("agent-bare", "bare InferenceServer", ("json",), _bare_agent,
                           only=DIAGNOSTIC_LOADS)  # fmt: skip
# The same with a shadow of the model attached (experiments): its p99 against agent-bare's.
PEERS["agent-shadow"] = Peer("agent-shadow", "bare InferenceServer + shadow", ("json",),
                             _shadowed_agent, only=DIAGNOSTIC_LOADS)  # fmt: skip
# agent-bare started a second time: its ratio to the first is what the machine alone gives.
PEERS["agent-bare-again"] = Peer("agent-bare-again", "bare InferenceServer, second process",
                                 ("json",), _bare_agent, only=DIAGNOSTIC_LOADS)  # fmt: skip
