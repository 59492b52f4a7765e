"""A name that does not exist: the 404 says what is missing and offers the close names."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.registry.conftest import Api
from tests.support.broker import LOCALHOST, free_port
from tests.support.models import ModelSet
from tests.support.registry import RegistryProcess, cli


@dataclass(frozen=True)
class Served:
    """A running registry with model `digits` v1 and device `pi-kitchen` in group `lab`."""

    home: Path
    url: str

    def fails(self, *args: str) -> str:
        """Run a command that must fail (exit 1) with one sentence; return it."""
        result = cli(*args, "--home", str(self.home), check=False)
        assert result.returncode == 1, result.stdout
        assert result.stderr.count("\n") == 1, result.stderr
        return result.stderr

    def status_and_error(self, method: str, path: str, body: object = None) -> tuple[int, str]:
        """Send a request with the admin token; return the status and the `error` text."""
        token = (self.home / "secrets" / "cli-token").read_text().strip()
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        request = urllib.request.Request(self.url + path, data, headers, method=method)  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                return response.status, ""
        except urllib.error.HTTPError as e:
            return e.code, str(json.loads(e.read())["error"])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, onnx_models: ModelSet) -> Iterator[Served]:
    """A registry with models `digits` and `prices`, devices `pi-kitchen`, `pi-garage` in `lab`."""
    base = tmp_path_factory.mktemp("names")
    home = base / "home"
    cli("init", "--home", str(home))
    registry = RegistryProcess(home, ("--embedded-broker", f"{LOCALHOST}:{free_port()}"))
    registry.start()
    try:
        at = ("--home", str(home))
        cli("push", str(onnx_models.classifier.onnx_path), "--name", "digits", *at)
        cli("push", str(onnx_models.regressor.onnx_path), "--name", "prices", *at)
        for device in ("pi-kitchen", "pi-garage"):
            cli("devices", "add", device, "--group", "lab", "--out", str(base / device), *at)
        yield Served(home, registry.url)
    finally:
        registry.stop()


@pytest.mark.parametrize(
    ("path", "sentence"),
    [
        ("/v1/models/digits/versions", "no model 'digits' (the registry has no models yet)"),
        ("/v1/devices/pi", "no device 'pi' (the registry has no devices yet)"),
    ],
)
async def test_an_empty_registry_says_it_has_none(api: Api, path: str, sentence: str) -> None:
    response = await api.client.get(path, headers=api.auth())
    assert response.status == 404
    assert (await response.json())["error"] == sentence


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (("deploy", "digitz", "1", "--group", "lab"), "no model 'digitz'; did you mean 'digits'?"),
        (("versions", "digitz"), "no model 'digitz'; did you mean 'digits'?"),
        (("rollback", "digitz", "--group", "lab"), "no model 'digitz'; did you mean 'digits'?"),
        (
            ("deploy", "digits", "1", "--device", "pi-kitchn"),
            "no device 'pi-kitchn'; did you mean 'pi-kitchen'?",
        ),
        (
            ("deploy", "digits", "1", "--device", "pi-kitchen", "pi-garge"),
            "no device 'pi-garge'; did you mean 'pi-garage'?",
        ),
        (("deploy", "digits", "1", "--group", "lbb"), "group 'lbb' has no devices; did you mean"),
        (("deploy", "digits", "7", "--group", "lab"), "model 'digits' has no version 7"),
        (("rollback", "digits", "--group", "lab"), "no earlier release of 'digits'"),
    ],
)
def test_cli_names_what_does_not_exist(
    served: Served, args: tuple[str, ...], sentence: str
) -> None:
    assert sentence in served.fails(*args)


def test_no_guess_when_nothing_is_close(served: Served) -> None:
    stderr = served.fails("versions", "zzzzzz")
    assert "no model 'zzzzzz'" in stderr
    assert "did you mean" not in stderr


@pytest.mark.parametrize(
    ("method", "path", "body", "sentence"),
    [
        ("GET", "/v1/models/digitz/versions", None, "no model 'digitz'; did you mean 'digits'?"),
        ("GET", "/v1/models/digitz/versions/1", None, "no model 'digitz'; did you mean"),
        ("GET", "/v1/models/digits/versions/9", None, "model 'digits' has no version 9"),
        ("POST", "/v1/models/pricez/rollback", {"group": "lab"}, "did you mean 'prices'?"),
        ("GET", "/v1/devices/pi-garag", None, "no device 'pi-garag'; did you mean 'pi-garage'?"),
        (
            "POST",
            "/v1/deployments",
            {"model": "digits", "version": 1, "group": "labb"},
            "group 'labb' has no devices; did you mean 'lab'?",
        ),
        (
            "POST",
            "/v1/deployments",
            {"model": "digits", "version": 1, "devices": ["pi-kitchen", "pi-kitchen2"]},
            "no device 'pi-kitchen2'; did you mean 'pi-kitchen'?",
        ),
    ],
)
def test_api_404_names_what_does_not_exist(
    served: Served, method: str, path: str, body: object, sentence: str
) -> None:
    status, error = served.status_and_error(method, path, body)
    assert status == 404
    assert sentence in error
