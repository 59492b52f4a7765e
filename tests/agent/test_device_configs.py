"""The shipped templates and the registry's device bundles load with the agent's loader.

A template names files that exist only on a provisioned device (root.json, mqtt-password,
ca.crt, api-token). Each test copies the template next to stand-ins for exactly those files,
so the loader runs its real checks (files exist, secrets readable) with no special mode.
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sys
import tomllib
from asyncio.subprocess import PIPE
from pathlib import Path

import pytest

from edge_agent.config.loader import load_config, supported_keys
from edge_agent.config.settings import DeviceConfig
from model_registry.config import load_config as load_registry_config
from model_registry.home import init_home
from model_registry.server import make_context
from model_registry.services.devices import BUNDLE_CONFIG, BUNDLE_PASSWORD, add_device
from model_registry.storage import open_storage
from tests.support.provisioning import write_tls

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = sorted((ROOT / "device_configs").glob("*.toml"))
EDGE_AGENT = Path(sys.executable).parent / "edge-agent"
# The keys whose value names a file the loader opens or checks.
FILE_KEYS = {
    ("trust", "root_file"),
    ("mqtt", "password_file"),
    ("mqtt", "ca_file"),
    ("mqtt", "client_cert"),
    ("mqtt", "client_key"),
    ("server", "token_file"),
}
STAND_IN = "stand-in-secret-0123456789"  # long enough to be a bearer token too


def install(template: Path, directory: Path) -> Path:
    """Copy `template` into `directory` and create every file it refers to."""
    config = directory / "device.toml"
    shutil.copyfile(template, config)
    data = tomllib.loads(config.read_text())
    for section, key in FILE_KEYS:
        name = data.get(section, {}).get(key)
        if name:
            (directory / name).parent.mkdir(parents=True, exist_ok=True)
            (directory / name).write_text(STAND_IN + "\n")
    return config


def test_there_are_templates_for_each_device_class() -> None:
    assert [t.stem for t in TEMPLATES] == [
        "jetson-orin-nano",
        "raspberry-pi-4",
        "raspberry-pi-5",
        "x86-gateway",
    ]


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.stem)
def test_every_template_loads(template: Path, tmp_path: Path) -> None:
    config = load_config(install(template, tmp_path))

    assert config.state_dir == Path("/var/lib/edge-agent")
    assert config.mqtt.url == "mqtts://broker.example.com:8883"
    assert config.mqtt.password == STAND_IN
    assert config.mqtt.ca_file == tmp_path.resolve() / "ca.crt"
    assert config.root_file == tmp_path.resolve() / "root.json"
    assert config.mqtt.username == config.device_id
    # Every class here has at least four cores and some only four: never more threads in flight.
    runtime = config.server.runtime
    assert runtime.intra_op_threads * runtime.inference_workers <= 4


@pytest.mark.parametrize("template", TEMPLATES, ids=lambda t: t.stem)
def test_every_template_sets_every_tuning_key(template: Path) -> None:
    data = tomllib.loads(template.read_text())
    present = {key for key in data if not isinstance(data[key], dict)}
    present |= {
        f"{name}.{key}" for name, table in data.items() if isinstance(table, dict) for key in table
    }
    # Keys that only some deployments need are documented, not set to a placeholder.
    optional = {"mqtt.username", "mqtt.client_cert", "mqtt.client_key", "server.socket"}
    optional |= {"server.socket_mode", "server.token_file", "artifacts.http_url", "mqtt.urls"}
    optional |= {
        f"grpc.{key}" for key in ("listen", "socket", "socket_mode", "max_concurrent_rpcs")
    }

    assert set(supported_keys()) - optional - present == set()


def load_template(name: str, directory: Path) -> DeviceConfig:
    """Load one template by name from a fresh copy in `directory`."""
    return load_config(install(ROOT / "device_configs" / f"{name}.toml", directory))


def test_raspberry_pi_4_leaves_a_core_free(tmp_path: Path) -> None:
    config = load_template("raspberry-pi-4", tmp_path)

    assert config.server.runtime.intra_op_threads == 3
    assert config.server.runtime.inference_workers == 1
    assert config.server.max_batch_size <= 16
    assert config.server.max_body_bytes <= 4 * 1024 * 1024
    assert config.telemetry.spool_max_bytes <= 16 * 1024 * 1024  # SD card


def test_jetson_prefers_tensorrt_then_cuda_then_cpu(tmp_path: Path) -> None:
    config = load_template("jetson-orin-nano", tmp_path)

    assert config.server.runtime.providers == (
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    )
    assert config.updates.activation_timeout_s >= 600  # TensorRT engine builds take minutes


def test_the_gateway_listening_on_the_lan_requires_a_token(tmp_path: Path) -> None:
    config = load_template("x86-gateway", tmp_path)

    assert config.server.host == "0.0.0.0"  # noqa: S104 - the value under test
    assert config.server.token == STAND_IN


def test_the_readme_and_the_docs_cover_everything() -> None:
    readme = (ROOT / "device_configs" / "README.md").read_text()
    docs = (ROOT / "docs" / "configuration.md").read_text()

    assert all(f"`{t.name}`" in readme for t in TEMPLATES)
    assert [key for key in supported_keys() if f"`{key.split('.')[-1]}`" not in docs] == []


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
async def test_a_registry_bundle_passes_check_config(tmp_path: Path, tls: bool) -> None:
    files = await _registry_bundle(tmp_path / "home", "pi-kitchen", tls=tls)
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for name, content in files.items():
        (bundle / name).write_bytes(content)

    process = await asyncio.create_subprocess_exec(
        str(EDGE_AGENT), "check-config", str(bundle / BUNDLE_CONFIG), stdout=PIPE, stderr=PIPE
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), timeout=120)

    assert process.returncode == 0, stderr.decode()
    assert "pi-kitchen" in stdout.decode()
    config = load_config(bundle / BUNDLE_CONFIG)
    assert config.mqtt.password == files[BUNDLE_PASSWORD].decode()
    assert config.state_dir == bundle.resolve() / "state"
    assert (config.mqtt.ca_file is not None) == tls


async def _registry_bundle(home: Path, device_id: str, *, tls: bool) -> dict[str, bytes]:
    """The files `model-registry devices add` would write, made by the registry's own code."""
    await init_home(home)
    config = load_registry_config(home)
    if tls:
        write_tls(home / "tls")
        (home / "tls" / "ca.crt").rename(home / "ca.crt")  # check-config opens it: a real CA
        mqtt = dataclasses.replace(
            config.mqtt, ca_file="ca.crt", device_url="mqtts://broker.example.com:8883"
        )
        config = dataclasses.replace(config, mqtt=mqtt)
    storage = open_storage(config.database_location)
    await storage.open()
    try:
        bundle = await add_device(make_context(config, storage), device_id)
    finally:
        await storage.close()
    return bundle.files
