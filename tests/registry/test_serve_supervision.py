"""A background task of `serve` that dies takes the registry down, so that it is restarted.

The trigger is real: the blob of a deployed model vanishes from the home, then the broker
restarts. The resync that republishes the retained state after the reconnection cannot read
the artifact; the registry must not go on answering its API with a broker it no longer feeds.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.broker import BrokerFactory
from tests.support.models import ModelSet
from tests.support.registry import RegistryProcess, cli, cli_json


def test_a_dead_resync_ends_serve_with_a_log_line(
    tmp_path: Path, broker_factory: BrokerFactory, onnx_models: ModelSet
) -> None:
    broker = broker_factory.plain()
    home = tmp_path / "home"
    cli("init", "--home", str(home))
    registry = RegistryProcess(home, ("--mqtt-url", broker.url))
    registry.start()
    try:
        release = cli_json(
            "push", str(onnx_models.regressor.onnx_path), "--name", "reg", "--home", str(home)
        )
        cli(
            "devices",
            "add",
            "dev-1",
            "--group",
            "g",
            "--out",
            str(tmp_path / "b"),
            "--home",
            str(home),
        )
        cli("deploy", "reg", str(release["version"]), "--group", "g", "--home", str(home))
        for blob in (home / "blobs").rglob("*"):
            if blob.is_file():
                blob.unlink()  # a lost disk, an over-eager clean-up

        broker.restart()
        assert registry.process is not None
        code = registry.process.wait(timeout=120)
    finally:
        registry.stop()
    log = registry.log_file.read_text()

    assert code == 1, log
    died = [line for line in log.splitlines() if "CRITICAL" in line]
    assert len(died) == 1, log
    assert "task 'broker resync' died: NotFoundError" in died[0]
    # Its traceback follows it, once: the record of the death and nothing else.
    assert log.count("model_registry.errors.NotFoundError: no blob") == 1
    assert log.index("Traceback (most recent call last)") > log.index(died[0])
    assert "model registry stopped: task 'broker resync' died" in log
    assert not (home / "serve.json").exists()
