"""Section 2c: one deploy to a large fleet (10,000 devices), timed from the API call to its answer.

The devices are written into the registry's database before `serve` starts, through the
registry's own storage: registering them through the API would cost a password hash and a
broker login each, which is not what this section measures. The deploy itself goes through
the REST API of a running `model-registry serve` with mosquitto, so the figure includes
resolving the group, signing every assignment, storing the deployment with them in one
transaction, and publishing every assignment retained at QoS 1 until the broker acknowledged
all of them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from benchmarks.common import WORK, load_average, log, median
from benchmarks.harness import Deployment
from benchmarks.models import update_model_file

MODEL = "scale"
GROUP = "scale"


@dataclass(frozen=True)
class Settings:
    """How many devices, and how many deploys to them."""

    devices: int
    runs: int


QUICK = Settings(devices=1000, runs=1)
FULL = Settings(devices=10_000, runs=3)


def register(home_database: str, count: int) -> float:
    """Store `count` devices of GROUP; return the seconds it took."""
    # Imported here: the other sections depend only on the registry's API and CLI.
    from model_registry.storage import DeviceRecord, open_storage  # noqa: PLC0415

    async def add_all() -> None:
        storage = open_storage(home_database)
        await storage.open()
        try:
            now = datetime.now(UTC)
            for index in range(count):
                # No password: these devices never log in, the deploy only publishes to them.
                record = DeviceRecord(f"scale-{index:05d}", GROUP, now, "pbkdf2$unused")
                await storage.add_device(record)
        finally:
            await storage.close()

    began = time.monotonic()
    asyncio.run(add_all())
    return time.monotonic() - began


def run(mode: str, database: str = "") -> dict[str, Any]:
    """Register the fleet, push a release per run, deploy it to the whole group, time each.

    `database`: a postgresql:// URL of an empty database (or schema) to run on; SQLite if empty.
    """
    settings = QUICK if mode == "quick" else FULL
    deployment = Deployment(WORK / "deploy-scale", database=database)
    registered: list[float] = []

    def before_serve() -> None:
        from model_registry.config import load_config  # noqa: PLC0415

        location = load_config(deployment.home).database_location
        registered.append(register(location, settings.devices))
        log(f"deploy scale: {settings.devices} devices stored in {registered[0]:.1f} s")

    deployment.start(before_serve)
    runs = []
    try:
        api = deployment.client()
        for run_index in range(settings.runs):
            version = deployment.push(update_model_file(700 + run_index), MODEL)
            load = [round(x, 2) for x in load_average()]
            began = time.monotonic()
            answer = api.post_json(
                "/v1/deployments", {"model": MODEL, "version": version, "group": GROUP}
            )
            took = time.monotonic() - began
            if len(answer["devices"]) != settings.devices:
                raise RuntimeError(f"the deployment lists {len(answer['device_ids'])} devices")
            runs.append({
                "run": run_index,
                "version": version,
                "deploy_s": round(took, 3),
                "per_device_ms": round(took * 1000 / settings.devices, 3),
                "load_average": load,
            })  # fmt: skip
            log(f"deploy scale run {run_index}: {settings.devices} devices in {took:.2f} s")
    finally:
        deployment.stop()
    return {
        "section": "deploy_scale",
        "mode": mode,
        "settings": {
            "devices": settings.devices,
            "runs": settings.runs,
            "storage": "postgresql" if database else "sqlite",
        },
        "register_s": round(registered[0], 1) if registered else None,
        "runs": runs,
        "summary": {
            "deploy_s_median": round(median([r["deploy_s"] for r in runs]), 3),
            "deploy_s_max": max(r["deploy_s"] for r in runs),
            "per_device_ms_median": round(median([r["per_device_ms"] for r in runs]), 3),
        },
    }


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="quick", choices=("quick", "full"))
    parser.add_argument("--database", default="", help="postgresql:// URL of an empty database")
    arguments = parser.parse_args()
    print(json.dumps(run(arguments.mode, arguments.database), indent=2))
