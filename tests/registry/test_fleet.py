"""The fleet view through the API: `deploy --wait`, device views, retention.

It runs the real API on SQLite with device messages fed through the real ingest, and time moved
by the context's injected clock (the status rules: test_fleet_rules.py).
"""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from edge_protocol import Topics
from edge_protocol.messages import event_payload, state_payload, telemetry_payload
from model_registry.cli import main
from model_registry.cli.follow import ProgressView
from model_registry.config import load_config
from model_registry.errors import ConfigError
from model_registry.home import InitResult
from model_registry.mqtt.client import MqttMessage
from model_registry.services.devices import add_device
from model_registry.services.ingest import DeviceIngest
from model_registry.services.releases import PushRequest, push_model
from model_registry.services.retention import prune_device_messages
from tests.registry.conftest import Api
from tests.support.models import ModelSet

TOPICS = Topics()

# --- through the API, with reports fed to the real ingest ---------------------------------


@dataclass
class Clock:
    """The registry's clock, moved by the test."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


@dataclass
class Lab:
    """Three provisioned devices in group `lab`, a pushed release, an ingest and the clock."""

    api: Api
    ingest: DeviceIngest
    clock: Clock
    version: int

    async def report(self, device: str, kind: str, payload: bytes) -> None:
        """Feed one device message to the ingest, one second later than the last."""
        self.clock.now += timedelta(seconds=1)
        await self.ingest.handle(MqttMessage(f"{TOPICS.prefix}/devices/{device}/{kind}", payload,
                                             False))  # fmt: skip

    async def event(self, device: str, event: str, **details: Any) -> None:
        """Report a lifecycle event about the pushed release."""
        payload = event_payload(device, event, model="clf", version=self.version, **details)
        await self.report(device, "events", payload)

    async def runs(self, device: str, version: int, phase: str = "idle") -> None:
        """Report a state in which `device` runs `version` of clf."""
        models = {"clf": {"active": {"version": version, "sha256": "a" * 64}, "phase": phase}}
        await self.report(device, "state", state_payload(device, agent_version="t", models=models,
                                                          trust={}))  # fmt: skip

    async def connects(self, device: str) -> None:
        """Report an online state that runs nothing yet."""
        await self.report(device, "state", state_payload(device, agent_version="t", models={},
                                                          trust={}))  # fmt: skip

    async def get(self, path: str, status: int = 200) -> Any:
        """GET an API path as admin."""
        response = await self.api.client.get(path, headers=self.api.auth())
        assert response.status == status, await response.text()
        return await response.json()

    async def cli(self, *argv: str) -> int:
        """Run `model-registry ARGV` against this API, off the event loop that serves it."""
        url = str(self.api.client.make_url("")).rstrip("/")
        auth = ["--url", url, "--token", self.api.admin_token]
        return await asyncio.to_thread(main, [*argv, *auth])


@pytest.fixture
async def lab(api: Api, onnx_models: ModelSet) -> Lab:
    clock = Clock(datetime.now(UTC).replace(microsecond=0))
    api.ctx.clock = clock
    model = onnx_models.classifier.onnx_path.read_bytes()
    release = await push_model(api.ctx, PushRequest(name="clf", model=model))
    for device in ("dev-1", "dev-2", "dev-3"):
        await add_device(api.ctx, device, group="lab")
    return Lab(api, DeviceIngest(api.ctx, TOPICS), clock, release.version)


async def _deploy(lab: Lab) -> int:
    body = {"model": "clf", "version": lab.version, "group": "lab"}
    response = await lab.api.client.post("/v1/deployments", json=body, headers=lab.api.auth())
    assert response.status == 201, await response.text()
    deployment_id: int = (await response.json())["id"]
    return deployment_id


async def test_a_deployment_shows_each_device_and_silent_ones_fail_at_the_deadline(
    lab: Lab,
) -> None:
    await lab.event("dev-3", "rejected", reason="expired")  # before the deployment: not its own
    lab.clock.now += timedelta(seconds=1)  # deployments are created on whole seconds
    deployment_id = await _deploy(lab)
    await lab.event("dev-1", "received")
    await lab.event("dev-1", "downloading", progress={"chunks_done": 0, "chunks_total": 4})
    await lab.runs("dev-1", lab.version, phase="probation")
    await lab.event("dev-1", "activated")
    await lab.event("dev-2", "rejected", reason="chunk_hash", detail="chunk 2 does not match")

    view = await lab.get(f"/v1/deployments/{deployment_id}")
    progress = view["progress"]
    assert (progress["done"], progress["succeeded"]) == (False, False)
    assert {k: v for k, v in progress["counts"].items() if v} == {
        "probation": 1, "failed": 1, "pending": 1,
    }  # fmt: skip
    by_device = {d["device_id"]: d for d in progress["devices"]}
    assert by_device["dev-2"]["reason"] == "chunk_hash"
    assert by_device["dev-2"]["detail"] == "chunk 2 does not match"

    await lab.runs("dev-1", lab.version)  # probation over
    lab.clock.now += timedelta(seconds=lab.api.ctx.config.deploy.deadline_s)
    progress = (await lab.get(f"/v1/deployments/{deployment_id}"))["progress"]
    assert (progress["done"], progress["succeeded"]) == (True, False)
    assert {d["device_id"]: d["status"] for d in progress["devices"]} == {
        "dev-1": "activated", "dev-2": "failed", "dev-3": "silent",
    }  # fmt: skip
    await lab.get("/v1/deployments/999", status=404)


async def test_deploy_wait_follows_until_every_device_runs_the_release(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    waiting = asyncio.create_task(lab.cli("deploy", "clf", str(lab.version), "--group", "lab",
                                          "--wait"))  # fmt: skip
    await _until_deployed(lab)
    for device in ("dev-1", "dev-2", "dev-3"):
        await lab.event(device, "received")
    out = await _until_printed(capsys, "0/3 activated: 3 downloading")
    for device in ("dev-1", "dev-2", "dev-3"):
        await lab.runs(device, lab.version)
    assert await waiting == 0
    out += capsys.readouterr().out
    assert "3/3 activated: 3 activated" in out
    assert out.rstrip().endswith(f"every device runs version {lab.version}")


async def test_deploy_wait_exits_1_naming_the_devices_that_failed_and_why(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    waiting = asyncio.create_task(lab.cli("deploy", "clf", str(lab.version), "--group", "lab",
                                          "--wait", "--json"))  # fmt: skip
    await _until_deployed(lab)
    await lab.runs("dev-1", lab.version)
    await lab.event("dev-2", "activated")
    await lab.event("dev-2", "rolled_back", reason="probation_failed")
    await lab.event("dev-3", "rejected", reason="chunk_hash")
    assert await waiting == 1
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1] == (
        "model-registry deploy: deployment 1 failed on dev-2 (rolled back: probation_failed), "
        "dev-3 (failed: chunk_hash)"
    )
    assert '"succeeded": false' in captured.out  # --json prints the final deployment


async def test_deploy_wait_counts_a_device_that_never_reports_as_failed_at_the_deadline(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    waiting = asyncio.create_task(lab.cli("deploy", "clf", str(lab.version), "--device", "dev-1",
                                          "dev-2", "--wait"))  # fmt: skip
    await _until_deployed(lab)
    await lab.runs("dev-1", lab.version)
    lab.clock.now += timedelta(seconds=lab.api.ctx.config.deploy.deadline_s + 1)
    assert await waiting == 1
    err = capsys.readouterr().err.strip()
    assert err.endswith("failed on dev-2 (silent: still pending when the deadline passed)")


async def test_deploy_timeout_gives_up_naming_the_devices_under_way(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    for device in ("dev-1", "dev-3"):
        await lab.connects(device)
    waiting = asyncio.create_task(lab.cli("deploy", "clf", str(lab.version), "--device", "dev-1",
                                          "dev-2", "dev-3", "--timeout", "1.5"))  # fmt: skip
    await _until_deployed(lab)
    await lab.event("dev-1", "received")
    assert await waiting == 1
    # A device the registry never heard from is named offline, not "still under way".
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "model-registry deploy: deployment 1 did not finish within 1.5 s: "
        "dev-2 is offline (still pending, last seen never); "
        "dev-1 (downloading), dev-3 (pending) still under way"
    )


async def test_deploy_warns_naming_the_devices_it_does_not_hear_from(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    await lab.connects("dev-1")
    assert await lab.cli("deploy", "clf", str(lab.version), "--group", "lab") == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("Deployment 1: deploy clf")  # made all the same
    assert captured.err.strip() == (
        "model-registry deploy: warning: 2 of 3 device(s) are not connected: "
        "dev-2 (offline, last seen never), dev-3 (offline, last seen never); "
        "each gets its assignment from the broker when it reconnects"
    )
    await lab.connects("dev-2")
    await lab.connects("dev-3")
    assert await lab.cli("deploy", "clf", str(lab.version), "--group", "lab") == 0
    assert capsys.readouterr().err == ""  # every device connected: nothing to warn about


async def test_deploy_wait_shows_what_each_device_is_doing(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    for device in ("dev-1", "dev-2"):
        await lab.connects(device)
    waiting = asyncio.create_task(lab.cli("deploy", "clf", str(lab.version), "--device", "dev-1",
                                          "dev-2", "--wait"))  # fmt: skip
    await _until_deployed(lab)
    await lab.event("dev-1", "received")
    await lab.event("dev-1", "downloading", progress={"chunks_done": 2, "chunks_total": 8})
    out = await _until_printed(capsys, "dev-1  downloading 2/8 chunks (25%)")
    await lab.event("dev-2", "activated")
    await lab.runs("dev-2", lab.version, phase="probation")
    out += await _until_printed(capsys, "dev-2  probation, ")
    assert " s in" in out.split("dev-2  probation, ", 1)[1].splitlines()[0]
    await lab.runs("dev-1", lab.version)
    await lab.runs("dev-2", lab.version)
    assert await waiting == 0
    out += capsys.readouterr().out
    # Into a pipe, each device's line is printed when it changes, never redrawn.
    assert "\x1b" not in out
    assert out.count("dev-1  downloading 2/8 chunks") == 1
    assert "dev-2  activated" in out


@pytest.mark.parametrize("seconds", ["0", "-5", "nan", "inf"])
async def test_a_timeout_must_be_positive(
    lab: Lab, capsys: pytest.CaptureFixture[str], seconds: str
) -> None:
    with pytest.raises(SystemExit) as exited:  # a usage error, before anything is sent
        await lab.cli("deploy", "clf", "1", "--group", "lab", "--timeout", seconds)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "usage: model-registry deploy " in err
    assert f"argument --timeout: must be a positive number of seconds, not '{seconds}'" in err
    assert await lab.api.ctx.storage.deployments() == []


async def _until_printed(capsys: pytest.CaptureFixture[str], text: str) -> str:
    out = ""
    async with asyncio.timeout(30):
        while text not in out:
            await asyncio.sleep(0.05)
            out += capsys.readouterr().out
    return out


async def _until_deployed(lab: Lab) -> None:
    async with asyncio.timeout(30):
        while not await lab.api.ctx.storage.deployments():  # noqa: ASYNC110 - a CLI in a thread
            await asyncio.sleep(0.05)


# --- device views --------------------------------------------------------------------------


async def test_devices_list_shows_phase_versions_and_last_error(
    lab: Lab, capsys: pytest.CaptureFixture[str]
) -> None:
    await _deploy(lab)
    await lab.runs("dev-1", lab.version, phase="probation")
    await lab.event("dev-2", "rejected", reason="chunk_hash")
    devices = {d["device_id"]: d for d in (await lab.get("/v1/devices"))["devices"]}
    assert devices["dev-1"]["phase"] == "probation"
    assert devices["dev-1"]["models"]["clf"] == {
        "assigned": lab.version, "active": lab.version, "phase": "probation", "last_error": None,
    }  # fmt: skip
    assert devices["dev-2"]["last_error"]["reason"] == "chunk_hash"
    assert (devices["dev-3"]["phase"], devices["dev-3"]["last_seen"]) == (None, None)

    assert await lab.cli("devices", "list", "--group", "lab") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["DEVICE", "GROUP", "STATE", "MODEL", "ASSIGNED", "ACTIVE",
                                "PHASE", "LAST", "SEEN", "LAST", "ERROR"]  # fmt: skip
    assert lines[2].startswith("dev-2")
    assert lines[2].endswith(f"rejected chunk_hash (clf v{lab.version})")


async def test_a_device_shows_recent_events_and_a_telemetry_series(lab: Lab) -> None:
    for n in range(5):
        await lab.report("dev-1", "telemetry", telemetry_payload("dev-1", {"requests": n}))
    await lab.event("dev-1", "received")
    await lab.event("dev-1", "verified")
    detail = await lab.get("/v1/devices/dev-1?events=1&telemetry=3")
    assert [e["body"]["event"] for e in detail["events"]] == ["verified"]
    assert [t["body"]["requests"] for t in detail["telemetry"]] == [2, 3, 4], "oldest first"
    assert all(t["received"].endswith("Z") for t in detail["telemetry"])
    full = await lab.get("/v1/devices/dev-1")
    assert (len(full["events"]), len(full["telemetry"])) == (2, 5)
    await lab.get("/v1/devices/dev-1?telemetry=0", status=400)
    await lab.get("/v1/devices/nobody", status=404)


# --- retention -----------------------------------------------------------------------------


async def test_the_retention_pass_deletes_telemetry_past_its_retention(lab: Lab) -> None:
    retention = timedelta(days=lab.api.ctx.config.fleet.telemetry_retention_days)
    await lab.report("dev-1", "telemetry", telemetry_payload("dev-1", {"n": "old"}))
    lab.clock.now += retention - timedelta(hours=1)
    await lab.report("dev-1", "telemetry", telemetry_payload("dev-1", {"n": "new"}))
    lab.clock.now += timedelta(hours=2)
    report = await prune_device_messages(lab.api.ctx)
    assert report.telemetry_pruned == 1
    assert [t.body["n"] for t in await lab.api.ctx.storage.telemetry("dev-1")] == ["new"]


def test_the_retention_is_configured_and_checked(registry_home: InitResult) -> None:
    home = registry_home.home
    assert load_config(home).fleet.telemetry_retention_days == 7
    config = home / "registry.toml"
    config.write_text(config.read_text().replace("retention_days = 7", "retention_days = 30"))
    assert load_config(home).fleet.telemetry_retention_days == 30
    config.write_text(config.read_text().replace("retention_days = 30", "retention_days = 0"))
    with pytest.raises(ConfigError, match=r"registry\.toml: fleet\.telemetry_retention_days"):
        load_config(home)


class _Terminal(io.StringIO):
    """Text written to what says it is a terminal."""

    def isatty(self) -> bool:
        return True


async def test_on_a_terminal_the_devices_are_redrawn_in_place(lab: Lab) -> None:
    deployment_id = await _deploy(lab)
    await lab.event("dev-1", "downloading", progress={"chunks_done": 1, "chunks_total": 4})
    terminal = _Terminal()
    view = ProgressView(terminal, clock=lambda: lab.clock.now)
    view.update(await lab.get(f"/v1/deployments/{deployment_id}"))
    lab.clock.now += timedelta(seconds=5)
    view.update(await lab.get(f"/v1/deployments/{deployment_id}"))
    first, second = terminal.getvalue().split("\x1b[4F\x1b[J")  # up 4 lines, erase to the end
    assert "dev-1  downloading 1/4 chunks (25%), 0 s in" in first
    assert "dev-1  downloading 1/4 chunks (25%), 5 s in" in second
    assert second.count("\n") == 4  # the summary and three devices, once each
