"""Both OpenAPI documents hold against a bounded schemathesis run on the live servers.

The registry and an agent serving a registry-delivered model run as real processes; schemathesis
generates valid and invalid requests from each server's own OpenAPI document and checks that no
answer is a 5xx and that every status returned is one the document lists. The run is bounded
(examples per operation, a fixed seed) so it is repeatable and fits in `make test`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Models, start_agent
from tests.support.agent import AgentProcess
from tests.support.fleet import Fleet
from tests.support.registry import cli

ROOT = Path(__file__).resolve().parents[2]
AGENT_DOC = ROOT / "docs" / "openapi-agent.json"
SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
CHECKS = "not_a_server_error,status_code_conformance"
EXAMPLES_PER_OPERATION = 40
SEED = 20261202
RUN_TIMEOUT_S = 600
QUICK_PROBATION = "[updates]\nprobation_s = 1\n"


@pytest.fixture(scope="module")
def serving_agent(fleet: Fleet, models: Models) -> Iterator[AgentProcess]:
    """An agent that serves version 1 of `clf`, delivered by the registry."""
    started: list[AgentProcess] = []
    agent = start_agent(fleet, started, "fuzz-0", "fuzz", QUICK_PROBATION)
    version = fleet.push(models.v1, "clf")["version"]
    cli("deploy", "clf", str(version), "--group", "fuzz", "--wait", *fleet.api())
    agent.wait_for_version("clf", version)
    yield agent
    agent.kill()


def _fuzz(schema: str, base_url: str, report: Path, *headers: str, exclude: str = "") -> None:
    """Run schemathesis; fail with every failure it reports."""
    argv = [str(SCHEMATHESIS), "run", schema, "--url", base_url, "--checks", CHECKS]
    if exclude:
        argv += ["--exclude-path", exclude]
    argv += ["--max-examples", str(EXAMPLES_PER_OPERATION), "--seed", str(SEED)]
    argv += ["--phases", "examples,coverage,fuzzing", "--workers", "1", "--no-shrink"]
    argv += ["--request-timeout", "30", "--report", "junit", "--report-dir", str(report)]
    for header in headers:
        argv += ["--header", header]
    result = subprocess.run(  # in the report's directory: schemathesis keeps a cache in its cwd
        argv, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False, cwd=report.parent
    )
    assert result.returncode == 0, f"schemathesis found failures:\n{result.stdout[-20000:]}"


def test_the_registry_api_returns_no_5xx_and_only_documented_statuses(
    fleet: Fleet, serving_agent: AgentProcess, tmp_path: Path
) -> None:
    token = (fleet.home / "secrets" / "cli-token").read_text().strip()
    schema = tmp_path / "registry-openapi.json"
    schema.write_text((ROOT / "model_registry" / "api" / "openapi.json").read_text())
    # The dashboard's live stream is meant to stay open (tests/registry/test_dashboard_api.py).
    _fuzz(
        str(schema),
        fleet.registry.url,
        tmp_path / "report",
        f"Authorization: Bearer {token}",
        exclude="/ui/events",
    )


def test_the_agent_api_returns_no_5xx_and_only_documented_statuses(
    serving_agent: AgentProcess, tmp_path: Path
) -> None:
    schema = tmp_path / "agent-openapi.json"
    document = json.loads(AGENT_DOC.read_text())
    document["servers"] = [{"url": serving_agent.url}]
    schema.write_text(json.dumps(document))
    _fuzz(str(schema), serving_agent.url, tmp_path / "report")
