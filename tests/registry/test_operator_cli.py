"""The commands an operator looks for, through the real CLI against a real `serve`.

devices show / move / remove, token list / revoke, versions with quality and sizes, a push of
the same file refused, and following a deployment: Ctrl-C, --timeout, rollback --wait.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from tests.support.broker import LOCALHOST, ConnectRefusedError, MqttTestClient, free_port
from tests.support.models import ModelSet
from tests.support.registry import BIN, RegistryProcess, cli, cli_json


@dataclass
class Served:
    """A home with `serve` running on the embedded broker at `mqtt_port`."""

    home: Path
    mqtt_port: int

    @property
    def args(self) -> tuple[str, ...]:
        """The CLI arguments that reach this registry as its admin."""
        return ("--home", str(self.home))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    home = tmp_path_factory.mktemp("operator") / "home"
    cli("init", "--home", str(home))
    port = free_port()
    registry = RegistryProcess(home, ("--embedded-broker", f"{LOCALHOST}:{port}"))
    registry.start()
    yield Served(home, port)
    registry.stop()


def _login(served: Served, device_id: str, bundle: Path) -> MqttTestClient:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id,
                         protocol=mqtt.MQTTv311)  # fmt: skip
    client.username_pw_set(device_id, (bundle / "mqtt-password").read_text().strip())
    return MqttTestClient.connect(client, LOCALHOST, served.mqtt_port, timeout=20)


def test_devices_show_move_and_remove(
    served: Served, onnx_models: ModelSet, tmp_path: Path
) -> None:
    cli("push", str(onnx_models.regressor.onnx_path), "--name", "shown", *served.args)
    cli("devices", "add", "op-1", "--group", "north", "--out", str(tmp_path / "b1"), *served.args)
    cli("deploy", "shown", "1", "--group", "north", *served.args)

    shown = cli("devices", "show", "op-1", *served.args).stdout
    assert shown.startswith("Device op-1 in group north: offline, last seen never\n")
    assert "  shown: assigned 1, active -, phase -" in shown
    assert "Recent events (newest first, 0):" in shown
    raw = cli_json("devices", "show", "op-1", *served.args)
    assert (raw["device_id"], raw["events"]) == ("op-1", [])
    bad = cli("devices", "show", "op-1", "--events", "0", *served.args, check=False)
    assert (bad.returncode, bad.stderr.strip()) == (
        1, "model-registry devices show: --events must be from 1 to 1000"
    )  # fmt: skip

    moved = cli("devices", "move", "op-1", "--group", "south", *served.args).stdout
    assert moved.splitlines()[0] == "Moved op-1 from group north to south"
    assert "the new group's deployments are not applied to it" in moved
    cli("devices", "add", "op-2", "--group", "west", "--out", str(tmp_path / "b2"), *served.args)
    bare = cli("devices", "show", "op-2", *served.args).stdout.splitlines()
    assert "Models: none assigned yet (model-registry deploy NAME VERSION --device ID)" in bare
    cli("deploy", "shown", "1", "--group", "west", *served.args)
    cli("push", str(onnx_models.classifier.onnx_path), "--name", "other", *served.args)
    cli("deploy", "other", "1", "--group", "west", *served.args)
    hint = cli("devices", "move", "op-1", "--group", "west", *served.args).stdout
    # It runs shown v1 like the group; the group's `other` is what it lacks, and how to get it.
    assert "model-registry deploy other 1 --device op-1" in hint
    assert "deploy shown" not in hint
    again = cli("devices", "move", "op-1", "--group", "west", *served.args).stdout
    assert again == "op-1 is already in group west\n"

    session = _login(served, "op-2", tmp_path / "b2")  # connected while it is removed
    removed = cli("devices", "remove", "op-2", *served.args)
    assert removed.stdout.splitlines()[0] == "Removed device op-2 (group west)"
    assert (
        "Broker: the embedded broker refuses devices it does not know, and closed its connection"
        in removed.stdout
    )
    assert removed.stderr == ""
    assert session.connection_lost.wait(20)
    session.close()  # paho's network thread would retry the removed login for the whole run
    with pytest.raises(ConnectRefusedError):
        _login(served, "op-2", tmp_path / "b2")
    gone = cli("devices", "show", "op-2", *served.args, check=False)
    assert (gone.returncode, gone.stderr.strip()) == (
        1, "model-registry devices show: no device 'op-2'; did you mean 'op-1'?"
    )  # fmt: skip
    assert [d["device_id"] for d in cli_json("devices", "list", *served.args)["devices"]] == [
        "op-1"
    ]


def test_token_list_and_revoke(served: Served) -> None:
    viewer = cli_json("token", "create", "--role", "viewer", "--name", "wall", *served.args)
    listing = cli("token", "list", *served.args).stdout.splitlines()
    assert listing[0].split() == ["ID", "NAME", "ROLE", "CREATED", "LAST", "USED"]
    assert any(line.split()[:3] == [str(viewer["id"]), "wall", "viewer"] for line in listing)
    assert viewer["token"] not in "\n".join(listing)

    as_viewer = ("--home", str(served.home), "--token", viewer["token"])
    denied = cli("token", "revoke", str(viewer["id"]), *as_viewer, check=False)
    assert (denied.returncode, "admin role" in denied.stderr) == (1, True)
    assert cli("token", "list", *as_viewer, check=False).returncode == 1

    revoked = cli("token", "revoke", str(viewer["id"]), *served.args).stdout
    assert revoked.strip() == f"Revoked viewer token {viewer['id']} ('wall')"
    refused = cli("models", *as_viewer, check=False)
    assert (refused.returncode, refused.stderr.strip()) == (
        1, "model-registry models: invalid or revoked token"
    )  # fmt: skip
    tokens = cli_json("token", "list", *served.args)["tokens"]
    admin = next(t for t in tokens if t["role"] == "admin")
    last = cli("token", "revoke", str(admin["id"]), *served.args, check=False)
    assert last.returncode == 1
    assert "is the last admin token; create another admin token first" in last.stderr


def test_versions_show_quality_sizes_and_gate_and_a_duplicate_push_is_refused(
    served: Served, onnx_models: ModelSet, tmp_path: Path
) -> None:
    model = onnx_models.classifier
    eval_set = tmp_path / "eval.npz"
    np.savez(eval_set, X=model.X_eval, y=model.y_eval)
    push = ["push", str(model.onnx_path), "--name", "graded", *served.args]
    cli(*push)
    cli(*push, "--quantize", "int8", "--eval", str(eval_set), "--allow-duplicate")
    again = cli(*push, check=False)
    assert again.returncode == 1
    assert again.stderr.startswith(
        "model-registry push: graded version 1 was built from this same file"
    )
    assert "--allow-duplicate" in again.stderr
    lines = cli("versions", "graded", *served.args).stdout.splitlines()
    assert lines[0].split()[:9] == ["VERSION", "LABEL", "METRIC", "FP32", "INT8", "FP32", "SIZE",
                                    "SIZE", "QUANTIZATION"]  # fmt: skip
    release = cli_json("versions", "graded", *served.args)["versions"][1]["build"]
    second = lines[2].split()
    assert second[:5] == ["2", "-", "accuracy", release["accuracy_fp32"], release["accuracy_int8"]]
    assert "passed" in second
    assert "KiB" in lines[2]
    assert "not applied" in lines[1]  # no gate on v1
    assert [v["version"] for v in cli_json("versions", "graded", *served.args)["versions"]] == [
        1, 2,
    ]  # fmt: skip


def _until_line(process: subprocess.Popen[str], text: str) -> str:
    assert process.stdout is not None
    seen = ""
    deadline = time.monotonic() + 60
    while text not in seen and time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
    assert text in seen, seen
    return seen


def test_ctrl_c_on_deploy_wait_says_what_is_under_way_and_how_to_follow_it(
    served: Served, onnx_models: ModelSet, tmp_path: Path
) -> None:
    cli("push", str(onnx_models.regressor.onnx_path), "--name", "waited", *served.args)
    cli("devices", "add", "sleepy", "--group", "quiet", "--out", str(tmp_path / "b"), *served.args)
    process = subprocess.Popen(
        [str(BIN / "model-registry"), "deploy", "waited", "1", "--group", "quiet", "--wait",
         *served.args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out = _until_line(process, "sleepy  pending; offline, last seen never")
        process.send_signal(signal.SIGINT)
        _rest, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert "0/1 activated: 1 pending" in out
    assert process.returncode == 130
    deployment = cli_json("deployments", "list", "--model", "waited", *served.args)["deployments"]
    ident = deployment[0]["id"]
    assert err.strip().splitlines()[-1] == (
        f"model-registry deploy: interrupted; deployment {ident} is still under way: 1 pending. "
        f"Follow it again with: model-registry deployments show {ident} --wait"
    )
    assert "Traceback" not in err

    followed = cli("deployments", "show", str(ident), "--wait", "--timeout", "1", *served.args,
                   check=False)  # fmt: skip
    assert followed.returncode == 1
    assert followed.stderr.strip() == (
        f"model-registry deployments show: deployment {ident} did not finish within 1 s: "
        "sleepy is offline (still pending, last seen never)"
    )
    assert "sleepy  pending; offline" in followed.stdout


def test_rollback_waits_like_deploy(served: Served, onnx_models: ModelSet, tmp_path: Path) -> None:
    push = ["push", str(onnx_models.classifier.onnx_path), "--name", "back", *served.args]
    cli(*push)
    cli(*push, "--allow-duplicate")
    cli("devices", "add", "rb-1", "--group", "rb", "--out", str(tmp_path / "b"), *served.args)
    cli("deploy", "back", "1", "--group", "rb", *served.args)
    cli("deploy", "back", "2", "--group", "rb", *served.args)
    result = cli("rollback", "back", "--group", "rb", "--timeout", "1", "--json", *served.args,
                 check=False)  # fmt: skip
    assert result.returncode == 1
    followed = json.loads(result.stdout)
    assert (followed["kind"], followed["version"]) == ("rollback", 1)
    assert "rb-1 is offline (still pending, last seen never)" in result.stderr
    assert "warning: 1 of 1 device(s) are not connected: rb-1 (offline" in result.stderr
