"""The registry's fleet gauges, and the files of deploy/: promtool accepts the alert rules,
and every metric the rules and the Grafana dashboard name is one the registry exposes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

from model_registry.api.metrics import RegistryMetrics
from model_registry.server import _ingest_metrics
from model_registry.services.ingest import DeviceIngest
from model_registry.storage import DeviceReport
from tests.registry.conftest import Api
from tests.support.storage_records import device

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "model-registry-alerts.yml"
GRAFANA = ROOT / "deploy" / "grafana" / "model-registry-fleet.json"
METRIC = re.compile(r"\bmodel_registry_[a-z0-9_]+")


async def exposition(api: Api) -> str:
    metrics = RegistryMetrics()
    _ingest_metrics(metrics, DeviceIngest(api.ctx, api.ctx.config.topics))
    metrics.observe("GET", "/v1/models", 500, 0.01)
    return await metrics.render(api.ctx)


async def test_fleet_gauges_count_groups_and_versions(api: Api) -> None:
    storage = api.ctx.storage
    now = api.ctx.clock()
    await storage.add_device(device("a1", group="lab", assigned={"clf": {"version": 2}}))
    await storage.add_device(device("a2", group="lab"))
    await storage.add_device(device("b1", group="field"))
    state = {"online": True, "models": {"clf": {"active": {"version": 2}, "phase": "idle"}}}
    await storage.add_device_reports([DeviceReport("a1", "state", now, state)])
    text = await exposition(api)
    assert 'model_registry_group_devices{group="lab",state="online"} 1' in text
    assert 'model_registry_group_devices{group="lab",state="offline"} 1' in text
    assert 'model_registry_group_devices{group="field",state="offline"} 1' in text
    assert 'model_registry_version_devices_serving{model="clf",version="2"} 1' in text
    assert 'model_registry_version_devices_assigned{model="clf",version="2"} 1' in text
    lag = re.search(r"^model_registry_ingest_lag_seconds (\S+)$", text, re.MULTILINE)
    assert lag is not None
    assert float(lag.group(1)) >= 0


def test_promtool_accepts_the_alert_rules() -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: run scripts/ensure-chromium.sh (make test does)"
    checked = subprocess.run(
        [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


async def test_every_metric_the_rules_and_the_dashboard_name_exists(api: Api) -> None:
    families = set(re.findall(r"^# TYPE (\S+) ", await exposition(api), re.MULTILINE))
    panels = json.loads(GRAFANA.read_text())["panels"]
    exprs = [t["expr"] for p in panels for t in p["targets"]]
    named = set(METRIC.findall(RULES.read_text())) | set(METRIC.findall(" ".join(exprs)))
    assert named, "no metric found in the files"
    assert named <= families, f"not exposed: {sorted(named - families)}"
