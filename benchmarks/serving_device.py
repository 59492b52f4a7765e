"""The agent of the serving benchmark as a device runs it.

One mosquitto and one `model-registry serve` for the whole serving section; every served model
file is pushed to the registry as is, and each model gets a device of its own (its own group),
provisioned through the API and assigned that model with `model-registry deploy`. The agent row
is then the real `edge-agent run` with the bundle the registry wrote: MQTT connected, telemetry
at its default interval, feature summaries and probation on, the model received as an update
(downloaded over MQTT on its first start, from its store on the next rounds).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edge_common.processes import LOCALHOST

from benchmarks.common import BIN, log
from benchmarks.harness import Deployment


class ServedModel(Protocol):
    """What a device needs to know of a served model (serving.Served)."""

    key: str
    name: str
    path: Path


@dataclass
class Device:
    """One provisioned device and the model version assigned to it."""

    device_id: str
    bundle: Path
    version: int


@dataclass
class ServingDevices:
    """The registry, the broker and one device per served model, created on first use."""

    root: Path
    deployment: Deployment | None = None
    devices: dict[str, Device] = field(default_factory=dict)
    versions: dict[Path, int] = field(default_factory=dict)

    def start(self) -> None:
        """mosquitto and the registry (nothing else runs until a device is needed)."""
        self.deployment = Deployment(self.root)
        self.deployment.start()

    def stop(self) -> None:
        """Stop the registry and the broker (the agents are stopped by the caller)."""
        if self.deployment is not None:
            self.deployment.stop()

    def device(self, served: ServedModel) -> Device:
        """The device serving `served`: pushed, provisioned and deployed the first time."""
        found = self.devices.get(served.key)
        if found is not None:
            return found
        deployment = self.deployment
        if deployment is None:
            raise RuntimeError("start the serving devices first")
        version = self.versions.get(served.path)
        if version is None:
            version = deployment.push(served.path, served.name, label=f"serving {served.key}")
            self.versions[served.path] = version
        device_id = f"serve-{served.key}"
        bundle = deployment.provision([device_id], device_id)[device_id]
        # The assignment is retained on the broker: the agent finds it when it connects.
        deployment.deploy(served.name, version, device_id)
        log(f"serving: device {device_id} assigned {served.name} v{version}")
        found = Device(device_id, bundle, version)
        self.devices[served.key] = found
        return found

    def argv(self, served: ServedModel, port: int, grpc_port: int | None = None) -> list[str]:
        """`edge-agent run` for the device of `served`, listening on `port` (and `grpc_port`)."""
        device = self.device(served)
        config = device.bundle / "device.toml"
        _set_grpc(config, grpc_port)
        argv = [str(BIN / "edge-agent"), "run", "--config", str(config)]
        argv += ["--listen", f"{LOCALHOST}:{port}", "--state-dir", str(device.bundle / "state")]
        return argv


GRPC_SECTION = re.compile(r"\n\[grpc\]\nlisten = \"[^\"]*\"\n")


def _set_grpc(config: Path, port: int | None) -> None:
    """Point the bundle's `[grpc]` listener at `port` (or remove it)."""
    text = GRPC_SECTION.sub("\n", config.read_text())
    if port is not None:
        text = text.rstrip("\n") + f'\n\n[grpc]\nlisten = "{LOCALHOST}:{port}"\n'
    config.write_text(text)
