"""A registry on PostgreSQL, end to end: init on a URL, serve, push, deploy, restart, still there.

The home keeps keys and blobs; every record lives in a schema of its own on the test server.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import CHUNK, Models, start_agent
from tests.support.agent import AgentProcess
from tests.support.broker import BrokerFactory
from tests.support.fleet import Fleet
from tests.support.postgres import Schema, new_schema
from tests.support.registry import cli_json


@pytest.fixture(scope="module")
def schema(postgres: str) -> Iterator[Schema]:
    with new_schema() as created:
        yield created


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, schema: Schema) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("postgres-fleet")
    factory = BrokerFactory(root / "brokers")
    fleet = Fleet(root, factory)
    fleet.start(chunk_size_kib=CHUNK // 1024, database=schema.url)
    yield fleet
    fleet.stop()
    factory.close()


def test_records_live_in_postgresql_and_survive_a_restart(
    fleet: Fleet, schema: Schema, models: Models, agents: list[AgentProcess]
) -> None:
    assert not Path(fleet.home / "registry.db").exists()
    assert f'database = "{schema.url}"' in (fleet.home / "registry.toml").read_text()
    assert schema.count("roots") == 1  # init stored root v1 and the admin token there
    assert schema.count("tokens") == 1

    version = fleet.push(models.v1, "clf")["version"]
    agent = start_agent(fleet, agents, "pg-a", "lab")
    fleet.deploy("clf", version, "lab")
    agent.wait_for_version("clf", version)
    status, _ = agent.infer("clf", models.rows)
    assert status == 200

    fleet.registry.stop()
    fleet.registry.start()

    [model] = cli_json("models", *fleet.api())["models"]
    assert (model["name"], model["latest_version"]) == ("clf", version)
    [deployment] = cli_json("deployments", "list", *fleet.api())["deployments"]
    assert (deployment["model"], deployment["version"], deployment["devices"]) == (
        "clf",
        version,
        ["pg-a"],
    )
    shown = cli_json("deployments", "show", str(deployment["id"]), *fleet.api())
    [progress] = shown["progress"]["devices"]  # derived from the events stored before
    assert progress["device_id"] == "pg-a"
    assert progress["status"] in {"probation", "activated"}
    [device] = cli_json("devices", "list", *fleet.api())["devices"]
    assert device["device_id"] == "pg-a"
    assert schema.count("deployment_targets") == 1
    # The restarted registry still serves the release to a device that joins now.
    late = start_agent(fleet, agents, "pg-b", "lab")
    fleet.deploy("clf", version, "lab")
    late.wait_for_version("clf", version)
