"""`model-registry serve` and the CLI under faults: a kill mid-write, answers lost on the way."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.broker import LOCALHOST, free_port
from tests.support.dropping_proxy import DroppingProxy
from tests.support.models import ModelSet
from tests.support.registry import RegistryProcess, cli, cli_json


@dataclass
class Served:
    home: Path
    registry: RegistryProcess

    def api(self, path: str) -> Any:
        token = (self.home / "secrets" / "cli-token").read_text().strip()
        request = urllib.request.Request(  # noqa: S310 - the test registry's http URL
            self.registry.url + path, headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return json.loads(response.read())


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, onnx_models: ModelSet) -> Iterator[Served]:
    """A registry with one model and one device, on the embedded broker."""
    root = tmp_path_factory.mktemp("serve-faults")
    home = root / "home"
    cli("init", "--home", str(home))
    registry = RegistryProcess(home, ("--embedded-broker", f"{LOCALHOST}:{free_port()}"))
    registry.start()
    cli("push", str(onnx_models.classifier.onnx_path), "--name", "clf", "--home", str(home))
    cli("devices", "add", "d-1", "--group", "lab", "--out", str(root / "b"), "--home", str(home))
    yield Served(home, registry)
    registry.stop()


def _deployments(served: Served) -> list[dict[str, Any]]:
    return list(served.api("/v1/deployments?model=clf")["deployments"])


def test_a_deploy_whose_answer_is_lost_is_retried_once_and_stored_once(served: Served) -> None:
    before = len(_deployments(served))
    with DroppingProxy(served.registry.port, drop=1) as proxy:
        result = cli("deploy", "clf", "1", "--group", "lab", "--json",
                     "--home", str(served.home), "--url", proxy.url)  # fmt: skip
        assert proxy.connections == 2, "one retry"
    deployment = json.loads(result.stdout)
    stored = _deployments(served)
    assert len(stored) == before + 1
    assert stored[0]["id"] == deployment["id"]


def test_a_deploy_that_never_hears_back_says_the_outcome_is_unknown(served: Served) -> None:
    before = len(_deployments(served))
    with DroppingProxy(served.registry.port, drop=10) as proxy:
        result = cli("deploy", "clf", "1", "--group", "lab",
                     "--home", str(served.home), "--url", proxy.url, check=False)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "may have stored" in result.stderr
    assert "model-registry deployments list" in result.stderr
    assert "--idempotency-key" in result.stderr
    assert len(_deployments(served)) == before + 1, "the retry replayed the first"
    key = result.stderr.split("--idempotency-key ")[1].split()[0].strip("`';.")
    replay = cli_json("deploy", "clf", "1", "--group", "lab", "--idempotency-key", key,
                      "--home", str(served.home))  # fmt: skip
    assert replay["id"] == _deployments(served)[0]["id"]
    assert len(_deployments(served)) == before + 1


def test_deployments_list_and_show(served: Served) -> None:
    cli("deploy", "clf", "1", "--group", "lab", "--home", str(served.home))
    listing = cli_json("deployments", "list", "--model", "clf", "--home", str(served.home))
    newest = listing["deployments"][0]
    shown = cli_json("deployments", "show", str(newest["id"]), "--home", str(served.home))
    assert shown["id"] == newest["id"]
    assert [d["device_id"] for d in shown["progress"]["devices"]] == ["d-1"]
    table = cli("deployments", "list", "--home", str(served.home)).stdout
    assert str(newest["id"]) in table
    missing = cli("deployments", "show", "999999", "--home", str(served.home), check=False)
    assert missing.returncode == 1
    assert "no deployment 999999" in missing.stderr


def test_a_restart_clears_what_a_kill_left_mid_write(served: Served) -> None:
    sha256 = served.api("/v1/models/clf/versions")["versions"][0]["sha256"]
    blobs = served.home / "blobs"
    assert served.registry.process is not None
    served.registry.process.kill()  # SIGKILL: no cleanup of any kind
    served.registry.process.wait()
    # What a kill in the middle of writes leaves: a blob half written, a home file half replaced.
    half_blob = blobs / sha256[:2] / ".tmp-k1ll3d"
    half_blob.write_bytes(b"the first half of a model")
    half_file = served.home / ".serve.json.x1y2z3.tmp"
    half_file.write_bytes(b'{"api_url": ')
    served.registry.start()
    assert not half_blob.exists()
    assert not half_file.exists()
    assert (blobs / sha256[:2] / sha256).is_file(), "whole blobs stay"
    assert served.api("/v1/models/clf/versions")["versions"][0]["sha256"] == sha256
