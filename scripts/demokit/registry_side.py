"""The registry's side of the story: its home, the running registry, models, devices."""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

from demokit.common import (
    DEVICES,
    GROUP,
    HOST,
    MARKER,
    MODEL,
    START_TIMEOUT_S,
    StepError,
    need,
    port_in_use,
    shown_path,
)
from demokit.devices import http, wait_until
from demokit.framework import DemoFramework
from demokit.training import make_data, train


class RegistrySide(DemoFramework):
    """Steps 1 to 7: the registry home, the registry, the model and its versions, the bundles."""

    def prepare(self) -> None:
        where = shown_path(self.work)
        if self.work.exists() and any(self.work.iterdir()):
            self._refuse_to_delete()
            title = f"Start fresh: remove {where}/ (left by a previous run) and recreate it"
        else:
            title = f"Create the working directory {where}/"
        with self.step(title) as step:
            if self.work.exists():
                shutil.rmtree(self.work)
            for directory in (self.work, self.models, self.logs, self.work / "devices"):
                directory.mkdir(parents=True, exist_ok=True)
            (self.work / MARKER).write_text("created by scripts/demo.py; removed by its next run\n")
            step.note(f"commands run from {where}/; each process logs to {where}/logs/")

    def _refuse_to_delete(self) -> None:
        if not (self.work / MARKER).exists():
            raise StepError(
                f"{self.work} exists and was not made by the demo; move it away or pass --dir"
            )
        serve_file = self.home / "serve.json"
        try:
            pid = int(json.loads(serve_file.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        if Path(f"/proc/{pid}").exists():
            raise StepError(
                f"a registry started in {self.work} is still running (pid {pid}); stop it "
                f"(kill {pid}) and any agents you started there, then run the demo again"
            )

    def init_home(self) -> None:
        with self.step("Create the registry home: keys, signed trust root, database") as step:
            output = self.cli("init", *self.home_args())
            step.note(f"$ model-registry init {' '.join(self.home_args())}")
            # The CLI reads the admin token from registry-home/secrets/cli-token; the demo's
            # output, often pasted into chats and bug reports, need not repeat it.
            hidden = "  mr_... (hidden by the demo; the CLI reads it from secrets/cli-token)"
            step.note(
                *(hidden if line.startswith("  mr_") else line for line in output.splitlines())
            )

    def start_registry(self) -> None:
        title = "Start the registry (REST API + embedded MQTT broker) on free ports"
        with self.step(title) as step:
            taken = port_in_use(1883)
            registry = self.procs.start(
                "registry", "model-registry", "serve", *self.home_args(),
                "--listen", f"{HOST}:0", "--embedded-broker", f"{HOST}:0",
            )  # fmt: skip
            self.registry = registry
            serve_file = self.home / "serve.json"

            def recorded() -> bool:
                try:
                    endpoint = json.loads(serve_file.read_text())
                except (OSError, ValueError):
                    return False
                if endpoint.get("pid") != registry.process.pid:
                    return False
                self.api_url, self.mqtt_url = endpoint["api_url"], endpoint["mqtt_url"]
                return True

            what = "the registry to record its address in serve.json"
            wait_until(what, recorded, START_TIMEOUT_S, [registry])
            healthz = http(f"{self.api_url}/healthz")
            if healthz is None or healthz.status != 200:
                raise StepError(f"the registry's {self.api_url}/healthz does not answer 200")
            step.note(
                f"$ {registry.shown}",
                f"API {self.api_url}, MQTT broker {self.mqtt_url} (pid {registry.process.pid})",
                f"dashboard {self.api_url}/ui/ (sign in with an API token; `make demo KEEP=1`"
                " keeps it up at the end)",
                "port 0 lets the system choose; the registry writes the ports it got to "
                "registry-home/serve.json",
            )
            if taken:
                step.note(
                    "(the default MQTT port 1883 is already taken on this machine, probably by "
                    "a system broker: that is why the demo does not use the defaults)"
                )

    def train_v1(self) -> None:
        title = "Train v1 with scikit-learn: MLP 32 -> 256 -> 256 -> 3 classes, 10 epochs"
        with self.step(title) as step:
            import numpy as np  # noqa: PLC0415

            self.data = make_data()
            holdout = self.models / "holdout.npz"
            np.savez(holdout, X=self.data.x_holdout, y=self.data.y_holdout)
            self.v1_model, accuracy = train(self.data, 10, self.models / "v1.joblib")
            step.note(
                f"{len(self.data.y_train)} training rows; holdout accuracy {accuracy:.3f} "
                f"on {len(self.data.y_holdout)} rows (saved as models/holdout.npz, arrays X, y)",
                "wrote models/v1.joblib",
            )

    def convert(self, version: str) -> None:
        with self.step(f"Convert {version} to ONNX with `model-registry build-sklearn`"):
            self._convert(version)

    def _convert(self, version: str) -> None:
        step = need(self.current, "the current step")
        args = ("build-sklearn", f"models/{version}.joblib", "--sample", "models/holdout.npz",
                "-o", f"models/{version}.onnx")  # fmt: skip
        output = self.cli(*args)
        step.note(f"$ model-registry {shlex.join(args)}", output.strip())

    def push(self, version: str, label: str) -> None:
        title = f"Push {version}: int8 quantization and the accuracy gate (at most 1 point lost)"
        with self.step(title) as step:
            args = ("push", f"models/{version}.onnx", "--name", MODEL, "--quantize", "int8",
                    "--eval", "models/holdout.npz", "--label", label,
                    *self.home_args())  # fmt: skip
            output = self.cli(*args)  # what the command prints, as you would see it
            step.note(f"$ model-registry {shlex.join(args)}", output.rstrip())

    def provision(self) -> None:
        title = f"Provision two devices in group {GROUP!r}: {', '.join(DEVICES)}"
        with self.step(title) as step:
            for agent in self.agents:
                bundle = shown_path(agent.bundle, self.work)
                args = ("devices", "add", agent.device, "--group", GROUP, "--out", bundle,
                        *self.home_args())  # fmt: skip
                self.cli(*args)
                files = ", ".join(sorted(p.name for p in agent.bundle.iterdir()))
                step.note(f"$ model-registry {shlex.join(args)}", f"  bundle: {files}")
