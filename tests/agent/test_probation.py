"""Each rule of probation, table-driven, on a real inference server and real onnxruntime models.

Version 1 of a model serves requests through the HTTP endpoint (what the device remembers of
it), then version 2 is swapped in and watched while it serves; the verdict is the reason code
of the rule it broke, or None when it passed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from aiohttp import ClientSession

from edge_agent.config.settings import UpdateSettings
from edge_agent.errors import ConfigError, ProbationFailedError
from edge_agent.metrics import AgentMetrics
from edge_agent.runtime import ModelRepository, load_model
from edge_agent.server import InferenceServer, ServerConfig
from edge_agent.update.observations import VERSIONS_PER_MODEL, RecentAnswers, quantile, top_share
from edge_agent.update.probation import ProbationWatcher, previous_record
from tests.agent.conftest import post
from tests.support.probation_models import FEATURES, KINDS, probation_model

SETTINGS = UpdateSettings(probation_requests=20, probation_s=600, probation_min_requests=10)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("probation-models")
    return {kind: probation_model(kind, root / f"{kind}.onnx") for kind in KINDS}


@dataclass(frozen=True)
class Case:
    before: str | None  # the kind of version 1, None for a first-ever version
    after: str
    expected: str | None
    settings: UpdateSettings = SETTINGS
    requests_before: int = 20


CASES = {
    "a-good-replacement-passes": Case("good", "good", None),
    "server-errors-fail-it": Case("good", "failing", "probation_failed"),
    "non-finite-outputs-fail-it": Case("good", "nonfinite", "probation_nonfinite"),
    "non-finite-outputs-fail-a-first-version-too": Case(None, "nonfinite", "probation_nonfinite"),
    "one-class-for-every-row-fails-it": Case("good", "collapse", "probation_collapse"),
    "one-class-is-fine-when-the-previous-did-the-same": Case("collapse", "collapse", None),
    "one-class-is-not-judged-without-a-previous-version": Case(None, "collapse", None),
    "one-class-is-not-judged-on-too-few-previous-answers": Case(
        "good", "collapse", None, requests_before=5
    ),
    "a-class-share-of-1-turns-the-rule-off": Case(
        "good", "collapse", None, replace(SETTINGS, probation_max_class_share=1.0)
    ),
    "a-much-slower-model-fails-it": Case("good", "slow", "probation_latency"),
    "a-latency-ratio-of-0-turns-the-rule-off": Case(
        "good", "slow", None, replace(SETTINGS, probation_max_latency_ratio=0)
    ),
    "a-slower-model-within-the-ratio-passes": Case(
        "good", "slow", None, replace(SETTINGS, probation_max_latency_ratio=1e6)
    ),
}


async def send(http: ClientSession, server: InferenceServer, count: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(count):
        rows = rng.normal(size=(1, FEATURES)).astype(np.float32)
        body = {"inputs": [{"name": "X", "datatype": "FP32", "shape": [1, FEATURES],
                            "data": rows.reshape(-1).tolist()}]}  # fmt: skip
        await post(http, f"{server.url}/v2/models/m/infer", json=body)


async def verdict(case: Case, models: dict[str, Path]) -> str | None:
    metrics, repository = AgentMetrics(), ModelRepository()
    recent = RecentAnswers(metrics)
    server = InferenceServer(repository, ServerConfig(port=0), metrics=metrics)
    await server.start()
    try:
        async with ClientSession() as http:
            if case.before is not None:
                repository.swap("m", load_model(models[case.before], name="m", version=1))
                await send(http, server, case.requests_before, seed=1)
            repository.swap("m", load_model(models[case.after], name="m", version=2))
            previous = previous_record(recent, "m", 1 if case.before else None)
            watcher = ProbationWatcher(metrics, "m", 2, case.settings, previous)
            watching = asyncio.create_task(watcher.watch())
            await asyncio.sleep(0)  # the watcher is listening from its first step
            await send(http, server, case.settings.probation_requests, seed=2)
            try:
                await watching
            except ProbationFailedError as e:
                return e.reason
            return None
    finally:
        await server.drain_and_stop()
        repository.close()


@pytest.mark.parametrize("case_id", sorted(CASES))
async def test_each_probation_rule(models: dict[str, Path], case_id: str) -> None:
    assert await verdict(CASES[case_id], models) == CASES[case_id].expected


def test_recent_answers_stay_bounded_per_model() -> None:
    metrics = AgentMetrics()
    recent = RecentAnswers(metrics)
    for version in range(1, 20):
        for _ in range(2000):
            recent.on_request("m", str(version), 200, 0.001)
    assert recent.get("m", 1) is None
    kept = [v for v in range(1, 20) if recent.get("m", v) is not None]
    assert kept == list(range(20 - VERSIONS_PER_MODEL, 20))
    record = recent.get("m", 19)
    assert record is not None
    assert len(record.latencies) <= 512


def test_quantile_and_share() -> None:
    assert quantile([float(i) for i in range(1, 101)], 0.99) == 99.0
    assert quantile([], 0.99) is None
    assert top_share([1, 1, 2, 3]) == 0.5


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("probation_min_requests", 0),
        ("probation_max_latency_ratio", -1),
        ("probation_max_class_share", 1.5),
        ("probation_latency_floor_ms", -1),
    ],
)
def test_probation_settings_are_checked(tmp_path: Path, key: str, value: float) -> None:
    from edge_agent.config.loader import load_config

    (tmp_path / "root.json").write_text("{}")
    config = tmp_path / "device.toml"
    config.write_text(
        f'device_id = "d1"\n[trust]\nroot_file = "root.json"\n[mqtt]\nurl = "mqtt://127.0.0.1:1"\n'
        f"[updates]\n{key} = {value}\n"
    )
    with pytest.raises(ConfigError, match=f"updates.{key}"):
        load_config(config)
