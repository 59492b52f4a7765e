#!/usr/bin/env python3
"""`make demo`: the whole operator story, end to end, on one machine.

A registry with its embedded MQTT broker, a scikit-learn model pushed with int8 quantization and
the accuracy gate, two provisioned devices with their agents, a deployment, predictions over Open
Inference Protocol v2 (JSON as curl sends it, then tritonclient), a second version swapped in
under live traffic, `devices list`, and a clean shutdown.

The product is driven only through what a user touches: the `model-registry` and `edge-agent`
commands (as subprocesses, from the working directory, so every command shown can be pasted),
HTTP to the agents, and tritonclient. Every process started is in its own process group and in a
tracked list; all of them are stopped on success, on failure and on Ctrl-C (SIGINT/SIGTERM/SIGHUP).

    .venv/bin/python scripts/demo.py [--dir demo-work]
"""

from __future__ import annotations

import argparse
import functools
import json
import shlex
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from demokit.common import (
    DEPLOY_TIMEOUT_S,
    GROUP,
    HOST,
    MODEL,
    SIGNALS,
    START_TIMEOUT_S,
    Interrupted,
    StepError,
    need,
    say,
    shown_path,
)
from demokit.devices import Traffic, answers, http, serves, wait_until
from demokit.processes import Tracked
from demokit.registry_side import RegistrySide
from demokit.training import train

from edge_common.processes import free_port


class Demo(RegistrySide):
    """The story: the steps of `story`, in order; then what the user needs to keep playing."""

    keep = False  # --keep: everything stays up before the shutdown until Ctrl-C

    # ---- the story

    def story(self) -> list[Callable[[], None]]:
        """The steps in the order they run; a step's number is its place in this list."""
        return [
            self.prepare,
            self.init_home,
            self.start_registry,
            self.train_v1,
            functools.partial(self.convert, "v1"),
            functools.partial(self.push, "v1", "first training"),
            self.provision,
            self.start_agents,
            self.deploy_v1,
            self.predict_curl,
            self.predict_triton,
            self.train_v2,
            functools.partial(self.push, "v2", "retrained, 10 more epochs"),
            self.swap,
            self.devices_list,
            self.shutdown,
        ]

    def run(self) -> None:
        """Every step in order."""
        story = self.story()
        self.total = len(story)
        for self.number, step in enumerate(story, 1):
            if self.keep and step == self.shutdown:
                self.keep_up()
            step()

    def start_agents(self) -> None:
        with self.step("Start two edge agents, one per device bundle") as step:
            registry = need(self.registry, "the registry")
            for agent in self.agents:
                agent.port = free_port()
                agent.tracked = self.procs.start(
                    agent.device, "edge-agent", "run",
                    "--config", shown_path(agent.bundle / "device.toml", self.work),
                    "--listen", f"{HOST}:{agent.port}",
                )  # fmt: skip
            for agent in self.agents:
                tracked = need(agent.tracked, f"{agent.device}'s agent")
                what = f"{agent.device}'s agent to answer /v2/health/live"
                wait_until(what, answers(agent, "/v2/health/live", 200), START_TIMEOUT_S,
                           [tracked, registry])  # fmt: skip
                ready = agent.status("/v2/health/ready")
                step.note(
                    f"$ {tracked.shown}",
                    f"  {agent.device} agent running (pid {tracked.process.pid}) on "
                    f"{agent.url}: live; /v2/health/ready is {ready} (no model yet)",
                )

    def _wait_for_version(self, version: str, watch: list[Tracked]) -> None:
        for agent in self.agents:
            what = f"{agent.device} to serve {MODEL} v{version}"
            wait_until(what, serves(agent, version), DEPLOY_TIMEOUT_S, watch)

    def _watch(self) -> list[Tracked]:
        return [t for t in (self.registry, *(a.tracked for a in self.agents)) if t is not None]

    def deploy_v1(self) -> None:
        title = f"Deploy v1 to group {GROUP!r} and wait until both agents serve it"
        with self.step(title) as step:
            args = ("deploy", MODEL, "1", "--group", GROUP, *self.home_args())
            output = self.cli(*args)
            step.note(f"$ model-registry {shlex.join(args)}", output.strip())
            began = time.monotonic()
            self._wait_for_version("1", self._watch())
            step.note(f"both agents verified, installed and self-tested v1 in "
                      f"{time.monotonic() - began:.1f} s:")  # fmt: skip
            for agent in self.agents:
                metadata = agent.metadata() or {}
                ready = agent.status(f"/v2/models/{MODEL}/ready")
                self.input_name = metadata["inputs"][0]["name"]
                step.note(
                    f"  {agent.device} serves {MODEL} v{agent.serving()} on {agent.url} "
                    f"(model ready: {ready}; input {self.input_name!r} "
                    f"{metadata['inputs'][0]['datatype']} {metadata['inputs'][0]['shape']})"
                )

    def _rows(self, start: int, count: int) -> tuple[list[list[float]], list[int]]:
        data = need(self.data, "the data set")
        rows = data.x_holdout[start : start + count]
        labels = data.y_holdout[start : start + count]
        return [[round(float(v), 3) for v in row] for row in rows], [int(y) for y in labels]

    def _infer_body(self, rows: list[list[float]], request_id: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"id": request_id} if request_id else {}
        body["inputs"] = [{"name": self.input_name, "datatype": "FP32",
                           "shape": [len(rows), len(rows[0])], "data": rows}]  # fmt: skip
        return body

    def predict_curl(self) -> None:
        agent = self.agents[0]
        title = f"Predict on {agent.device} over Open Inference Protocol v2 (JSON, like curl)"
        with self.step(title) as step:
            rows, labels = self._rows(0, 1)
            self.sample_row = rows[0]
            body = self._infer_body(rows, "demo-1")
            url = f"{agent.url}/v2/models/{MODEL}/infer"
            answer = http(url, body)
            if answer is None:
                raise StepError(f"{url} did not answer")
            step.note(
                f"$ curl -si {url} -H 'Content-Type: application/json' \\",
                f"    -d '{json.dumps(body)}'",
                f"HTTP/1.1 {answer.status} {answer.reason}",
                *(f"{name}: {value}" for name, value in answer.headers),
                "",
                answer.body.decode(errors="replace"),
            )
            if answer.status != 200:
                raise StepError(f"the agent answered {answer.status}")
            label = answer.json()["outputs"][0]["data"][0]
            step.note(f"(predicted class {label}; the holdout row's true class is {labels[0]})")

    def predict_triton(self) -> None:
        agent = self.agents[1]
        with self.step(f"Predict on {agent.device} with tritonclient (binary tensors)") as step:
            try:
                import numpy as np  # noqa: PLC0415
                import tritonclient.http as httpclient  # noqa: PLC0415
            except ImportError as e:
                raise StepError(f"{e}; install it with: pip install 'tritonclient[http]'") from e
            rows, labels = self._rows(1, 4)
            client = httpclient.InferenceServerClient(f"{HOST}:{agent.port}")
            try:
                batch = np.array(rows, dtype=np.float32)
                inp = httpclient.InferInput(self.input_name, list(batch.shape), "FP32")
                inp.set_data_from_numpy(batch)  # binary by default
                result = client.infer(MODEL, [inp])
                live, ready = client.is_server_live(), client.is_model_ready(MODEL)
            finally:
                client.close()
            response = result.get_response()
            probabilities = result.as_numpy("probabilities")
            step.note(
                f"client = tritonclient.http.InferenceServerClient({f'{HOST}:{agent.port}'!r})",
                f"client.is_server_live() -> {live}, client.is_model_ready({MODEL!r}) -> {ready}",
                f"inp = InferInput({self.input_name!r}, {list(batch.shape)}, 'FP32'); "
                "inp.set_data_from_numpy(batch)",
                f"result = client.infer({MODEL!r}, [inp])",
                f"  model_version {response['model_version']}",
                f"  label         {result.as_numpy('label').tolist()}   (true: {labels})",
                f"  probabilities {np.round(probabilities.astype(float), 3).tolist()}",
            )

    def train_v2(self) -> None:
        title = "Retrain as v2 (v1 trained 10 more epochs) and convert it to ONNX"
        with self.step(title) as step:
            data, v1 = need(self.data, "the data set"), need(self.v1_model, "model v1")
            _model, accuracy = train(data, 10, self.models / "v2.joblib", start=v1)
            step.note(f"holdout accuracy {accuracy:.3f}; wrote models/v2.joblib")
            self._convert("v2")

    def swap(self) -> None:
        agent = self.agents[0]
        title = f"Deploy v2 while a local app keeps calling {agent.device}: the live swap"
        with self.step(title) as step:
            rows, _labels = self._rows(5, 1)
            traffic = Traffic(agent, self._infer_body(rows))
            traffic.start()
            try:
                wait_until("the first answers", lambda: traffic.total >= 20, 30, self._watch())
                args = ("deploy", MODEL, "2", "--group", GROUP, *self.home_args())
                deployed = time.monotonic()
                output = self.cli(*args)
                self._wait_for_version("2", self._watch())
                time.sleep(0.5)  # v2 keeps answering for a moment
            finally:
                traffic.stop()
            step.note(f"$ model-registry {shlex.join(args)}", output.strip())
            failed = len(traffic.failures)
            answered = ", ".join(f"v{v}: {n}" for v, n in sorted(traffic.versions.items()))
            step.note(
                f"{traffic.total} requests during the swap, {failed} failed; answered by {answered}"
            )
            if "2" in traffic.first_seen:
                after = traffic.first_seen["2"] - deployed
                step.note(f"{agent.device} answered with v2 {after:.2f} s after the deploy "
                          f"command; versions switched {traffic.switches} time(s)")  # fmt: skip
            for each in self.agents:
                step.note(f"{each.device} serves {MODEL} v{each.serving()}")
            behind = [each for each in self.agents if each.serving() != "2"]
            if behind:  # rolled back by its probation, say: the device says why
                why = "; ".join(f"{each.device}: {each.update_status()}" for each in behind)
                raise StepError(f"not every device kept v2: {why}")
            if failed:
                examples = "; ".join(traffic.failures[:3])
                raise StepError(f"{failed} request(s) failed during the swap: {examples}")

    def devices_list(self) -> None:
        with self.step("Ask the registry what the fleet runs: devices list") as step:

            def reported() -> bool:
                devices = self.cli_json("devices", "list", *self.home_args())["devices"]
                return all(
                    (d["models"].get(MODEL) or {}).get("active") == 2 for d in devices
                ) and len(devices) == len(self.agents)

            try:
                wait_until("both devices to report v2 as active", reported, 30, self._watch())
            except StepError as e:
                step.note(f"note: {e}; showing the list as it is")
            for args in (("devices", "list"), ("versions", MODEL)):
                output = self.cli(*args, *self.home_args())
                step.note(f"$ model-registry {shlex.join((*args, *self.home_args()))}")
                step.note(output.rstrip())
                if "probation" in output:
                    step.note(
                        "(PHASE probation: the agent commits a new version after 20 requests or "
                        "30 s without errors, and rolls back on its own otherwise)"
                    )

    def keep_up(self) -> None:
        """`--keep`: everything stays up until Ctrl-C, with a token to look at the dashboard."""
        viewer = self.cli_json("token", "create", "--role", "viewer", "--name", "demo-dashboard",
                               *self.home_args())  # fmt: skip
        say()
        say(f"The dashboard: {self.api_url}/ui/")
        say(f"  sign in with this viewer token: {viewer['token']}")
        say("  (a publisher or admin token can deploy from it too: "
            "model-registry token create --role publisher --home registry-home)")  # fmt: skip
        say("Everything stays up until Ctrl-C.")
        try:
            while True:
                time.sleep(3600)
        except Interrupted:
            say("\nCtrl-C: shutting down")

    def shutdown(self) -> None:
        with self.step("Shut down: SIGTERM the agents, then the registry") as step:
            step.note(*self.procs.stop_all())
            for tracked in (self.registry, *(a.tracked for a in self.agents)):
                if tracked is not None and tracked.process.returncode != 0:
                    raise StepError(f"{tracked.name} did not stop cleanly; see "
                                    f"{shown_path(tracked.log or Path())}")  # fmt: skip


def _failure(demo: Demo, error: BaseException, out: TextIO) -> None:
    step = demo.current
    where = f"at step {step.number} ({step.title})" if step else "before the first step"
    print(f"\nThe demo FAILED {where}:\n  {error}", file=out, flush=True)
    if step is not None and demo.logs.exists():
        print(f"Logs of every process: {shown_path(demo.logs)}/ (commands.log holds every "
              "command with its output)", file=out, flush=True)  # fmt: skip
        for tracked in (demo.registry, *(a.tracked for a in demo.agents)):
            if tracked is not None and tracked.log is not None and tracked.log.exists():
                tail = tracked.log.read_text(errors="replace").splitlines()[-6:]
                print(f"--- last lines of {shown_path(tracked.log)}", file=out)
                for line in tail:
                    print(f"  {line}", file=out)
        out.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the demo; 0 on success, 1 when a step failed, 128+N on signal N."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dir", type=Path, default=Path("demo-work"),
        help="working directory, removed and recreated at start (default: ./demo-work)",
    )  # fmt: skip
    parser.add_argument(
        "--keep", action="store_true",
        help="keep the registry and agents up at the end, until Ctrl-C, to look at the dashboard",
    )  # fmt: skip
    args = parser.parse_args(argv)
    demo = Demo(args.dir)
    demo.keep = bool(args.keep)
    SIGNALS.install()
    steps = len(demo.story())
    say(f"edge-model-runtime demo: registry, two devices, two model versions ({steps} steps)")
    code = 0
    try:
        demo.run()
    except Interrupted as e:
        say(f"\nInterrupted by {e}: stopping everything the demo started")
        code = 128 + e.signum
    except StepError as e:
        _failure(demo, e, sys.stdout)
        code = 1
    except Exception as e:  # noqa: BLE001 - whatever breaks, name the step and clean up
        _failure(demo, RuntimeError(f"{type(e).__name__}: {e}"), sys.stdout)
        traceback.print_exc()
        code = 1
    finally:

        def hurry(_signum: int, _frame: FrameType | None) -> None:
            demo.procs.hurry = True

        SIGNALS.install(hurry)  # a second Ctrl-C: SIGKILL whatever is left
        leftovers = demo.procs.stop_all()
        if leftovers:
            say("Stopped: " + "; ".join(leftovers))
    if code == 0:
        demo.summary()
    return code


if __name__ == "__main__":
    sys.exit(main())
