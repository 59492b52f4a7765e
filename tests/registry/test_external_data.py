"""A publisher pushes models whose tensors are "external data" pointing at the registry's secrets.

onnxruntime resolves such a location against the working directory of `serve` (or takes it as
it is), so a registry that built and self-tested the model would put the file's bytes into the
signed self-test outputs. The registry must refuse every one of them with a 400 that says why,
quotes neither the file nor its size, and stores nothing.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from model_registry.cli.client import ApiClient, ApiError
from tests.support import external_data
from tests.support.broker import LOCALHOST, free_port
from tests.support.registry import RegistryProcess, cli, cli_json

UP_TO_ROOT = "../" * 64  # more levels than any path has: from anywhere, this is /
UNIT = Path(__file__).parents[2] / "deploy" / "systemd" / "model-registry.service"


@dataclass
class Served:
    """A registry home inside the directory `serve` was started from, and a publisher."""

    launch_dir: Path
    home: Path
    registry: RegistryProcess
    publisher: ApiClient

    def secret(self, relative: str) -> bytes:
        """The bytes of a file of the home."""
        return (self.home / relative).read_bytes()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`serve` started from the parent of its home, as `model-registry serve` does by default."""
    launch_dir = tmp_path_factory.mktemp("launch")
    home = launch_dir / "registry-home"
    cli("init", "--home", str(home))
    registry = RegistryProcess(
        home, ("--embedded-broker", f"{LOCALHOST}:{free_port()}"), cwd=launch_dir
    )
    registry.start()
    token = cli_json("token", "create", "--role", "publisher", "--home", str(home))["token"]
    try:
        yield Served(launch_dir, home, registry, ApiClient(registry.url, token))
    finally:
        registry.stop()


def _push(served: Served, model: bytes) -> ApiError:
    with pytest.raises(ApiError) as caught:
        served.publisher.post_files("/v1/models/leak/versions", {"model": model})
    return caught.value


def _assert_refused(served: Served, error: ApiError, secret: bytes, where: str) -> None:
    message = str(error)
    assert error.status == 400, message
    assert "refers to external data" in message
    assert where in message
    for line in secret.decode().splitlines():
        if len(line) > 8:  # the token, every base64 line of the key
            assert line not in message
    assert str(len(secret)) not in message, "the file's size is not revealed"
    assert "ONNXRuntimeError" not in message
    assert cli_json("models", "--home", str(served.home))["models"] == [], "nothing is stored"
    assert [p for p in (served.home / "blobs").rglob("*") if p.is_file()] == []


LOCATIONS = {
    "token relative to serve's start": ("registry-home/secrets/cli-token", "secrets/cli-token"),
    "release key relative to serve's start": ("registry-home/keys/release.pem", "keys/release.pem"),
    "release key relative to the home": ("keys/release.pem", "keys/release.pem"),
    "absolute path": (None, "secrets/cli-token"),
    "up to / and down": ("..", "keys/release.pem"),
}


@pytest.mark.parametrize("case", sorted(LOCATIONS))
def test_an_initializer_pointing_at_a_secret_is_refused(served: Served, case: str) -> None:
    location, relative = LOCATIONS[case]
    target = served.home / relative
    if location is None:
        location = str(target)
    elif location == "..":
        location = UP_TO_ROOT + str(target).lstrip("/")
    secret = served.secret(relative)
    model = external_data.initializer(location, len(secret)).SerializeToString()
    error = _push(served, model)
    _assert_refused(served, error, secret, "graph.initializer[0]")
    assert location not in str(error), "the location is not echoed either"


@pytest.mark.parametrize("variant", sorted(external_data.LOADED_BY_ONNXRUNTIME))
def test_a_reference_hidden_anywhere_in_the_model_is_refused(served: Served, variant: str) -> None:
    secret = served.secret("secrets/cli-token")
    build = external_data.LOADED_BY_ONNXRUNTIME[variant]
    model = build("registry-home/secrets/cli-token", len(secret)).SerializeToString()
    error = _push(served, model)
    _assert_refused(served, error, secret, external_data.WHERE[variant])


def test_a_wrong_length_does_not_reveal_the_size(served: Served) -> None:
    secret = served.secret("secrets/cli-token")
    for length in (len(secret) + 1, len(secret) - 1, 1 << 20):
        model = external_data.initializer(UP_TO_ROOT + str(served.home / "secrets/cli-token")[1:],
                                          length).SerializeToString()  # fmt: skip
        _assert_refused(served, _push(served, model), secret, "graph.initializer[0]")


def test_the_cli_push_is_refused_the_same_way(served: Served, tmp_path: Path) -> None:
    secret = served.secret("secrets/cli-token")
    path = tmp_path / "leak.onnx"
    path.write_bytes(
        external_data.constant("registry-home/secrets/cli-token", len(secret)).SerializeToString()
    )
    result = cli("push", str(path), "--name", "leak", "--home", str(served.home), check=False)
    assert result.returncode == 1
    assert "refers to external data" in result.stderr
    assert secret.decode().strip() not in result.stderr + result.stdout


def test_serve_runs_from_an_empty_private_directory(served: Served) -> None:
    assert served.registry.process is not None
    cwd = Path(os.readlink(f"/proc/{served.registry.process.pid}/cwd"))
    assert cwd != served.launch_dir
    assert not cwd.is_relative_to(served.home)
    info = cwd.stat()
    assert stat.S_IMODE(info.st_mode) == 0o700
    assert info.st_uid == os.getuid()
    assert list(cwd.iterdir()) == []


def _service_section() -> dict[str, str]:
    values: dict[str, str] = {}
    section = ""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif line and not line.startswith("#") and section == "Service":
            key, _, value = line.partition("=")
            values[key] = value
    return values


def test_the_unit_starts_serve_in_an_empty_private_directory() -> None:
    service = _service_section()
    assert service["WorkingDirectory"] == f"/run/{service['RuntimeDirectory']}"
    assert service["RuntimeDirectoryMode"] == "0700"
    assert service["UMask"] == "0077"
    assert service["ExecStart"].split()[1:] == ["serve", "--home", "/srv/registry-home"]
    assert service["ReadWritePaths"] == "/srv/registry-home"


@pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze is not installed")
def test_systemd_analyze_accepts_the_registry_unit(tmp_path: Path) -> None:
    # verify checks that ExecStart's binary exists: point it at this virtualenv's.
    binary = Path(sys.executable).parent / "model-registry"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/model-registry/bin/model-registry", str(binary)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")
