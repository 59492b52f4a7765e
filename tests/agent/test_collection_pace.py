"""The cyclic collector's pace once the server serves (edge_agent/server/collection.py)."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from edge_agent.runtime import ModelRepository
from edge_agent.server import InferenceServer, ServerConfig
from edge_agent.server.collection import YOUNG_THRESHOLD, pace_collection


@pytest.fixture
def thresholds() -> Iterator[None]:
    saved, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*saved)
    if enabled:
        gc.enable()


async def test_a_started_server_collects_young_objects_less_often(thresholds: None) -> None:
    gc.set_threshold(700, 10, 10)  # Python's default
    server = InferenceServer(ModelRepository(), ServerConfig(port=0))
    await server.start()
    try:
        assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
    finally:
        await server.drain_and_stop()


@pytest.mark.parametrize(
    ("before", "enabled"),
    [((50_000, 5, 5), True), ((0, 10, 10), True), ((700, 10, 10), False)],
    ids=["a-slower-pace", "collection-off-by-threshold", "collector-disabled"],
)
def test_a_pace_the_process_chose_is_kept(
    thresholds: None, before: tuple[int, int, int], enabled: bool
) -> None:
    gc.set_threshold(*before)
    if not enabled:
        gc.disable()
    pace_collection()
    assert gc.get_threshold() == before
    assert gc.isenabled() is enabled
