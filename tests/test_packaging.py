"""Packaging for devices: the agent's dependencies exist as aarch64 wheels; Dockerfile.arm64.

The wheel test asks the package registry, so it needs the network. When the registry cannot
be reached it fails and says so: an unchecked dependency must not look like a checked one.
"""

from __future__ import annotations

import ast
import fnmatch
import http.server
import json
import re
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile.arm64"
STATE_DIR = "/var/lib/edge-agent"
# What a 64-bit ARM board with Debian 12's glibc 2.36 (Raspberry Pi OS bookworm) accepts.
AARCH64_PLATFORMS = ["manylinux2014_aarch64"] + [
    f"manylinux_2_{minor}_aarch64" for minor in range(17, 37)
]
# The oldest onnxruntime the agent supports; the one `make arm64-check` runs under qemu.
OLDEST_ONNXRUNTIME = "1.19.2"
PIP_TIMEOUT_S = 900
# What pip prints when it cannot reach an index at all (as opposed to finding no wheel).
NETWORK_ERRORS = (
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "Name or service not known",
    "Network is unreachable",
    "Max retries exceeded",
    "ConnectTimeoutError",
    "Read timed out",
    "ProxyError",
    "SSLError",
)


def _normalise(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match, requirement
    return re.sub(r"[-_.]+", "-", match.group()).lower()


def agent_requirements() -> list[str]:
    """What a device installs: the base dependencies and the `agent` extra of pyproject.toml."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["agent"]]


def _pinned_onnxruntime(requirements: list[str]) -> list[str]:
    return [
        f"onnxruntime=={OLDEST_ONNXRUNTIME}" if _normalise(r) == "onnxruntime" else r
        for r in requirements
    ]


def _pip_download(requirements: list[str], destination: Path) -> None:
    """`pip download` binary wheels for CPython 3.11 on aarch64; fail clearly when it cannot."""
    argv = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-input"]
    argv += ["--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp"]
    argv += ["--abi", "cp311", "--timeout", "60", "--retries", "5", "-d", str(destination)]
    for platform in AARCH64_PLATFORMS:
        argv += ["--platform", platform]
    try:
        done = subprocess.run(
            [*argv, *requirements],
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(
            f"pip download did not finish within {PIP_TIMEOUT_S} s: this test needs the "
            "package registry; check the network or pip's index configuration",
            pytrace=False,
        )
    output = done.stdout + done.stderr
    if done.returncode == 0:
        return
    if any(marker in output for marker in NETWORK_ERRORS):
        pytest.fail(
            "the package registry is unreachable, so the aarch64 wheels could not be "
            "checked (this test needs the network):\n" + _tail(output),
            pytrace=False,
        )
    pytest.fail(
        "an agent dependency has no aarch64 wheel for CPython 3.11 and would need a "
        "compiler on the device:\n" + _tail(output),
        pytrace=False,
    )


def _tail(output: str, lines: int = 25) -> str:
    # Keep pip's own error, drop the noise of ignored local index locations.
    kept = [line for line in output.splitlines() if "is ignored: it is neither" not in line]
    return "\n".join(kept[-lines:])


def _platform_tag(wheel: str) -> str:
    """The platform part of a wheel file name (`any`, or dotted manylinux tags)."""
    return wheel.removesuffix(".whl").split("-")[-1]


@pytest.mark.timeout(PIP_TIMEOUT_S + 120)
@pytest.mark.parametrize(
    "pin", [False, True], ids=["as-declared", f"onnxruntime-{OLDEST_ONNXRUNTIME}"]
)
def test_every_agent_dependency_has_an_aarch64_wheel(tmp_path: Path, pin: bool) -> None:
    requirements = agent_requirements()
    if pin:
        requirements = _pinned_onnxruntime(requirements)

    _pip_download(requirements, tmp_path)

    wheels = sorted(path.name for path in tmp_path.iterdir())
    assert wheels, "pip downloaded nothing"
    assert all(name.endswith(".whl") for name in wheels), wheels
    compiled = {w: _platform_tag(w) for w in wheels if _platform_tag(w) != "any"}
    assert all(tag.endswith("aarch64") for t in compiled.values() for tag in t.split(".")), compiled
    downloaded = {_normalise(w.split("-")[0]) for w in wheels}
    assert {_normalise(r) for r in requirements} <= downloaded
    if pin:
        assert any(w.startswith(f"onnxruntime-{OLDEST_ONNXRUNTIME}-") for w in wheels)


def grpc_requirements() -> list[str]:
    """What a device serving gRPC adds: the `grpc` extra, without its own `[agent]` reference."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    return [r for r in extras["grpc"] if _normalise(r) != "edge-model-runtime"]


@pytest.mark.timeout(PIP_TIMEOUT_S + 120)
def test_the_grpc_extra_has_aarch64_wheels(tmp_path: Path) -> None:
    requirements = grpc_requirements()
    assert {_normalise(r) for r in requirements} >= {"grpcio", "protobuf"}
    assert not {_normalise(r) for r in agent_requirements()} & {"grpcio", "protobuf"}  # optional

    _pip_download(requirements, tmp_path)

    wheels = sorted(path.name for path in tmp_path.iterdir())
    compiled = {w: _platform_tag(w) for w in wheels if _platform_tag(w) != "any"}
    assert compiled, wheels
    assert all(tag.endswith("aarch64") for t in compiled.values() for tag in t.split(".")), compiled
    assert {_normalise(r) for r in requirements} <= {_normalise(w.split("-")[0]) for w in wheels}


# --- Dockerfile.arm64 ---------------------------------------------------------------------


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    instructions = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def _stages() -> list[list[tuple[str, str]]]:
    """The instructions of each stage, from its FROM on."""
    stages: list[list[tuple[str, str]]] = []
    for instruction in _instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _last(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [arguments for name, arguments in stage if name == keyword]
    assert found, f"the final stage has no {keyword}"
    return found[-1]


def test_every_stage_is_built_for_arm64() -> None:
    stages = _stages()

    assert len(stages) >= 2, "a build stage and a runtime stage"
    assert all(stage[0][1].startswith("--platform=linux/arm64 ") for stage in stages)
    base = dict(arg.split("=", 1) for name, arg in _instructions() if name == "ARG" and "=" in arg)
    assert re.match(r"python:3\.11[-.]", base["PYTHON_IMAGE"])


def test_the_build_installs_only_binary_wheels_of_the_agent_extra() -> None:
    build = " ".join(arguments for name, arguments in _stages()[0] if name == "RUN")

    assert "--only-binary=:all:" in build
    assert "[agent]" in build


def test_the_runtime_stage_runs_the_agent_as_non_root() -> None:
    final = _stages()[-1]
    user = _last(final, "USER").split(":")[0]

    assert user not in {"root", "0"}
    assert any(name == "COPY" and arguments.startswith("--from=") for name, arguments in final)
    assert STATE_DIR in json.loads(_last(final, "VOLUME"))
    entrypoint = json.loads(_last(final, "ENTRYPOINT"))
    assert entrypoint[:2] == ["edge-agent", "run"]
    assert entrypoint[entrypoint.index("--state-dir") + 1] == STATE_DIR
    assert entrypoint[entrypoint.index("--config") + 1] == "/etc/edge-agent/device.toml"
    # Not /, from where a relative file name in a model would reach /etc/edge-agent.
    assert _last(final, "WORKDIR") == "/var/empty/edge-agent"


def _healthcheck() -> tuple[str, list[str]]:
    """(options, exec-form command) of the final stage's HEALTHCHECK."""
    options, _, command = _last(_stages()[-1], "HEALTHCHECK").partition(" CMD ")
    return options, json.loads(command)


def test_the_healthcheck_asks_readiness_with_python_alone() -> None:
    _, command = _healthcheck()

    assert command[:2] == ["python", "-c"]
    ast.parse(command[2])
    assert "/v2/health/ready" in command[2]
    assert "curl" not in " ".join(command)
    listen = json.loads(_last(_stages()[-1], "CMD"))
    port = listen[listen.index("--listen") + 1].rsplit(":", 1)[1]
    assert f"127.0.0.1:{port}/" in command[2]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/v2/health/ready" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_the_healthcheck_exit_code_follows_readiness(
    health_server: http.server.HTTPServer, status: int, healthy: bool
) -> None:
    _, command = _healthcheck()
    code = command[2].replace(":8080/", f":{health_server.server_address[1]}/")
    _Health.status = status

    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, timeout=30, check=False
    )

    assert (done.returncode == 0) == healthy


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore excludes `path` (the last matching pattern wins)."""
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        bare = pattern.removeprefix("!").rstrip("/")
        if fnmatch.fnmatch(path, bare) or path.startswith(bare + "/"):
            ignored = not negated
    return ignored


def test_the_build_context_holds_what_the_build_copies_and_nothing_secret() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = [
        source
        for name, arguments in _instructions()
        if name == "COPY" and not arguments.startswith("--from=")
        for source in arguments.split()[:-1]
    ]

    assert copied
    assert [source for source in copied if _ignored(source.rstrip("/"), patterns)] == []
    for private in (".venv", ".git", "registry-home", "tests", ".cache", "device_configs"):
        assert _ignored(private, patterns), private
