"""`model-registry` as scripts use it: exit codes, one-sentence errors, --json listings."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.support.broker import LOCALHOST, free_port
from tests.support.models import ModelSet
from tests.support.registry import RegistryProcess, cli, cli_json

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def served_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A registry home with `serve` running on the embedded broker."""
    home = tmp_path_factory.mktemp("cli") / "home"
    cli("init", "--home", str(home))
    registry = RegistryProcess(home, ("--embedded-broker", f"{LOCALHOST}:{free_port()}"))
    registry.start()
    yield home
    registry.stop()


def test_usage_errors_exit_2() -> None:
    result = cli("push", "model.onnx", check=False)
    assert result.returncode == 2
    assert "--name" in result.stderr
    assert cli("deploy", "m", "1", check=False).returncode == 2  # no target


def test_init_twice_fails_with_one_sentence(tmp_path: Path) -> None:
    cli("init", "--home", str(tmp_path / "h"))
    result = cli("init", "--home", str(tmp_path / "h"), check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "refusing to overwrite" in result.stderr


def test_unreachable_registry_is_a_clear_failure() -> None:
    result = cli(
        "models", "--url", f"http://{LOCALHOST}:{free_port()}", "--token", "x", check=False
    )
    assert result.returncode == 1
    assert "cannot reach the registry" in result.stderr


def test_a_home_without_serve_or_no_home_says_which(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli("init", "--home", str(home))
    config = home / "registry.toml"
    port = free_port()  # the default 8700 may be another registry's on this machine
    config.write_text(config.read_text().replace("127.0.0.1:8700", f"{LOCALHOST}:{port}"))
    stopped = cli("models", "--home", str(home), check=False)
    assert stopped.returncode == 1
    assert f"cannot reach the registry at http://{LOCALHOST}:{port}" in stopped.stderr
    assert f"no serve is running from {home}: start it with" in stopped.stderr
    typo = cli("models", "--home", str(tmp_path / "hom"), check=False)
    assert typo.returncode == 1
    assert f"{tmp_path / 'hom'} is not a registry home (no registry.toml)" in typo.stderr


def test_listings_and_errors_against_a_running_registry(
    served_home: Path, onnx_models: ModelSet, tmp_path: Path
) -> None:
    home = ("--home", str(served_home))
    cli("push", str(onnx_models.regressor.onnx_path), "--name", "reg", *home)
    assert [m["name"] for m in cli_json("models", *home)["models"]] == ["reg"]
    versions = cli_json("versions", "reg", *home)["versions"]
    assert versions[0]["version"] == 1
    assert "VERSION" in cli("versions", "reg", *home).stdout

    added = cli("devices", "add", "cli-dev", "--group", "g", "--out", str(tmp_path / "b"), *home)
    assert "Broker: the embedded broker admits the device at once" in added.stdout
    assert (tmp_path / "b" / "mqtt-password").stat().st_mode & 0o777 == 0o600
    listed = cli_json("devices", "list", *home)["devices"]
    assert [d["device_id"] for d in listed] == ["cli-dev"]
    deployment = cli_json("deploy", "reg", "1", "--group", "g", *home)
    assert deployment["devices"] == ["cli-dev"]

    missing = cli("deploy", "reg", "7", "--group", "g", *home, check=False)
    assert missing.returncode == 1
    assert "has no version 7" in missing.stderr
    duplicate = cli("devices", "add", "cli-dev", "--out", str(tmp_path / "c"), *home, check=False)
    assert duplicate.returncode == 1
    assert "cli-dev" in duplicate.stderr


def test_tokens_by_role(served_home: Path) -> None:
    home = ("--home", str(served_home))
    viewer = cli_json("token", "create", "--role", "viewer", *home)["token"]
    assert cli("models", "--home", str(served_home), "--token", viewer).returncode == 0
    denied = cli("token", "create", "--role", "admin", *home, "--token", viewer, check=False)
    assert denied.returncode == 1
    assert "admin role" in denied.stderr
    forged = cli("models", *home, "--token", "mr_forged", check=False)
    assert forged.returncode == 1
    assert "token" in forged.stderr
    json.dumps(viewer)


def test_empty_listings_say_so_and_unknown_filters_name_the_close_ones(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cli("init", "--home", str(home))
    registry = RegistryProcess(home, ("--embedded-broker", f"{LOCALHOST}:{free_port()}"))
    registry.start()
    try:
        at = ("--home", str(home))
        for args, key, sentence in [
            (("models",), "models", "No models yet: push one with model-registry push"),
            (("devices", "list"), "devices", "No devices yet: provision one with model-registry"),
            (("deployments", "list"), "deployments", "No deployments yet"),
        ]:
            result = cli(*args, *at)
            assert result.stdout.startswith(sentence), result.stdout
            assert "Traceback" not in result.stderr
            assert cli_json(*args, *at)[key] == []  # scripts still get the empty list
        cli("devices", "add", "pi-lab1", "--group", "lab", "--out", str(tmp_path / "b"), *at)
        group = cli("devices", "list", "--group", "lba", *at, check=False)
        assert group.returncode == 1
        assert "group 'lba' has no devices; did you mean 'lab'?" in group.stderr
        nothing = cli("deployments", "list", "--model", "cancer", *at, check=False)
        assert nothing.returncode == 1
        assert "no model 'cancer' (the registry has no models yet)" in nothing.stderr
    finally:
        registry.stop()


def test_a_bad_dataset_is_named_by_its_option_and_file(
    served_home: Path, onnx_models: ModelSet, tmp_path: Path
) -> None:
    rows = tmp_path / "rows.npz"
    np.savez(rows, X=np.zeros((4, 8), dtype=np.float32))
    model = str(onnx_models.regressor.onnx_path)
    home = ("--home", str(served_home))
    no_y = cli("push", model, "--name", "ds", "--eval", str(rows), *home, check=False)
    assert (no_y.returncode, no_y.stderr) == (
        1, f"model-registry push: --eval {rows}: has no array named 'y' (arrays found: X)\n"
    )  # fmt: skip
    not_npz = cli("push", model, "--name", "ds", "--quantize", "int8", "--calibration", model,
                  *home, check=False)  # fmt: skip
    assert not_npz.returncode == 1
    assert f"--calibration {model}: not a readable .npz archive" in not_npz.stderr


def test_a_reader_that_goes_away_gets_no_error_sentence(served_home: Path) -> None:
    process = subprocess.Popen(
        [str(BIN / "model-registry"), "token", "list", "--home", str(served_home)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdout is not None
    assert process.stderr is not None
    process.stdout.close()  # as `| head -0` does, before the table is printed
    stderr = process.stderr.read()
    assert process.wait(timeout=60) == 1
    assert stderr == ""  # not "[Errno 32] Broken pipe", which reads as a failed command
