"""Fixtures for the agent's runtime and inference server: real models, real servers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from aiohttp import ClientSession
from onnx import TensorProto, helper, numpy_helper

from edge_agent.runtime import LoadedModel, ModelRepository, load_model
from edge_agent.server import InferenceServer, ServerConfig
from edge_common.processes import LOCALHOST
from tests.agent.blobs import Blob, make_blob
from tests.agent.device_toml import PASSWORD, TOKEN
from tests.support.models import BuiltModel, ModelSet, build_classifier
from tests.support.probation_models import KINDS, probation_model
from tests.support.provisioning import write_root, write_tls
from tests.support.systemd_notify import NotifyListener

OPSET = [helper.make_opsetid("", 17)]


@pytest.fixture(scope="session")
def classifier_v2(tmp_path_factory: pytest.TempPathFactory) -> BuiltModel:
    """A second classifier with the same io as `onnx_models.classifier` but other weights."""
    path = tmp_path_factory.mktemp("onnx-v2") / "classifier.onnx"
    return build_classifier(path, n_samples=400)


@pytest.fixture(scope="session")
def sim_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small classifier of each kind probation judges (same io), for the simulator."""
    root = tmp_path_factory.mktemp("sim-models")
    return {kind: probation_model(kind, root / f"{kind}.onnx", slow_steps=40000) for kind in KINDS}


def _save(model: Any, path: Path) -> Path:
    model.ir_version = 8  # loadable by the oldest onnxruntime the agent supports
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture(scope="session")
def gather_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """idx INT64[N] -> value FP32[N] = 1.5 * idx; an index outside 0..9 fails inside onnxruntime."""
    data = numpy_helper.from_array(np.arange(10, dtype=np.float32) * 1.5, "data")
    graph = helper.make_graph(
        [helper.make_node("Gather", ["data", "idx"], ["value"], axis=0)],
        "gather",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"])],
        [helper.make_tensor_value_info("value", TensorProto.FLOAT, ["N"])],
        [data],
    )
    model = helper.make_model(graph, opset_imports=OPSET)
    return _save(model, tmp_path_factory.mktemp("onnx-gather") / "gather.onnx")


@pytest.fixture(scope="session")
def kinds_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three inputs of other datatypes: text BYTES[N], flag BOOL[N], half FP16[N,2]."""
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["text"], ["text_out"]),
            helper.make_node("Not", ["flag"], ["flag_out"]),
            helper.make_node("Add", ["half", "half"], ["half_out"]),
        ],
        "kinds",
        [
            helper.make_tensor_value_info("text", TensorProto.STRING, ["N"]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, ["N"]),
            helper.make_tensor_value_info("half", TensorProto.FLOAT16, ["N", 2]),
        ],
        [
            helper.make_tensor_value_info("text_out", TensorProto.STRING, ["N"]),
            helper.make_tensor_value_info("flag_out", TensorProto.BOOL, ["N"]),
            helper.make_tensor_value_info("half_out", TensorProto.FLOAT16, ["N", 2]),
        ],
    )
    model = helper.make_model(graph, opset_imports=OPSET)
    return _save(model, tmp_path_factory.mktemp("onnx-kinds") / "kinds.onnx")


def load(model: BuiltModel, version: int = 1) -> LoadedModel:
    """Load a built sklearn model under its own name."""
    return load_model(model.onnx_path, name=model.name, version=version)


def ort_outputs(path: Path, inputs: dict[str, np.ndarray[Any, Any]]) -> dict[str, Any]:
    """What onnxruntime itself computes: the reference every response is compared with."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


@pytest.fixture
def repository(onnx_models: ModelSet) -> Iterator[ModelRepository]:
    """Serving the classifier and the regressor, version 1 each."""
    repo = ModelRepository()
    repo.swap("classifier", load(onnx_models.classifier))
    repo.swap("regressor", load(onnx_models.regressor))
    yield repo
    repo.close()


ServerFactory = Callable[..., Awaitable[InferenceServer]]


@pytest.fixture
async def start_server(repository: ModelRepository) -> AsyncIterator[ServerFactory]:
    """Start InferenceServers on 127.0.0.1:0 (settings as keywords); all stopped afterwards."""
    servers: list[InferenceServer] = []

    async def start(repo: ModelRepository | None = None, **settings: Any) -> InferenceServer:
        executor = settings.pop("executor", None)
        config = ServerConfig(**{"port": 0, **settings})
        server = InferenceServer(repo or repository, config, executor=executor)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.drain_and_stop()


@pytest.fixture
async def server(start_server: ServerFactory) -> InferenceServer:
    """A server with default settings on the shared repository."""
    return await start_server()


@pytest.fixture
async def http() -> AsyncIterator[ClientSession]:
    """An aiohttp client session."""
    async with ClientSession() as session:
        yield session


class Gate:
    """Occupies a one-thread executor until opened: work queued behind it waits, for sure."""

    def __init__(self) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="test-gate")
        self._event = threading.Event()
        self.executor.submit(self._event.wait)

    def open(self) -> None:
        """Let the executor run what is queued."""
        self._event.set()

    def close(self) -> None:
        """Open and shut the executor down."""
        self.open()
        self.executor.shutdown(wait=True)


@pytest.fixture
def gate() -> Iterator[Gate]:
    """A gated executor to hold batches in flight deterministically."""
    g = Gate()
    yield g
    g.close()


async def eventually(predicate: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    """Wait until `predicate()` holds (a liveness bound, not a timing assertion)."""
    async with asyncio.timeout(timeout_s):
        while not predicate():  # noqa: ASYNC110 - the state belongs to the code under test
            await asyncio.sleep(0.005)


def infer_body(model: BuiltModel, rows: np.ndarray[Any, Any], **extra: Any) -> dict[str, Any]:
    """A JSON OIP request for a sklearn model's single FP32 input."""
    return {
        "inputs": [
            {
                "name": model.input_name,
                "datatype": "FP32",
                "shape": list(rows.shape),
                "data": rows.tolist(),
            }
        ],
        **extra,
    }


@dataclass(frozen=True)
class Reply:
    """An HTTP reply read completely."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON."""
        import json

        return json.loads(self.body)


async def post(http: ClientSession, url: str, **kwargs: Any) -> Reply:
    """POST and read the whole reply."""
    async with http.post(url, **kwargs) as response:
        return Reply(response.status, dict(response.headers), await response.read())


async def get(http: ClientSession, url: str, **kwargs: Any) -> Reply:
    """GET and read the whole reply."""
    async with http.get(url, **kwargs) as response:
        return Reply(response.status, dict(response.headers), await response.read())


@pytest.fixture
async def raw_http() -> AsyncIterator[ClientSession]:
    """A client that sends bodies exactly as given (no automatic decompression)."""
    async with ClientSession(auto_decompress=False) as session:
        yield session


@pytest.fixture
def blob() -> Blob:
    return make_blob()


@pytest.fixture
def no_network_thread_survives() -> Iterator[None]:
    """Leaving `async with AgentMqtt` has stopped paho's network thread, whatever happened."""
    yield
    survivors = [t.name for t in threading.enumerate() if t.name.startswith("paho-mqtt-client")]
    assert survivors == []


@pytest.fixture
async def silent_broker() -> AsyncIterator[tuple[int, asyncio.Event]]:
    """A TCP listener that accepts and reads but never answers; yields (port, ended event)."""
    ended = asyncio.Event()

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the client goes away
        ended.set()
        writer.close()

    server = await asyncio.start_server(swallow, LOCALHOST, 0)
    yield int(server.sockets[0].getsockname()[1]), ended
    server.close()
    await server.wait_closed()


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    """A directory with the files a config refers to (as a device bundle would have them)."""
    directory = (tmp_path / "etc").resolve()
    write_tls(directory / "tls")  # tls/ca.crt, tls/client.crt, tls/client.key
    write_root(directory / "root.json")
    files = {
        "mqtt-password": PASSWORD + "\n",
        "api-token": TOKEN + "\n",
        "empty": "",
        "short-token": "short\n",
    }
    for name, content in files.items():
        (directory / name).write_text(content)
    return directory


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    """A notify socket on the file system, as systemd uses for services."""
    notify = NotifyListener(str(tmp_path / "notify"))
    yield notify
    notify.close()
