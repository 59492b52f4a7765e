"""Root rotation as the running agent applies it (docs/protocol.md 5.2), on the simulator.

Roots arrive retained on `{p}/trust/root/{version}`; the agent applies them strictly one
version at a time, each signed by a threshold of the trusted root's root keys and of its own,
persists the newest, and from then on trusts only the release keys it names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.config.settings import UpdateSettings
from edge_protocol import SigningKey
from tests.protocol.factory import Registry
from tests.support.update_sim import Sim, run_sim

M = "m"
SETTINGS = UpdateSettings(
    probation_requests=5, probation_s=600, probation_min_requests=5,
    probation_max_latency_ratio=0,  # latency is not what these cases are about
)  # fmt: skip


@dataclass(frozen=True)
class RootCase:
    publish: Callable[[Registry], list[tuple[int, bytes]]]  # (topic version, document) in order
    trusted: int  # the root version trusted afterwards
    reason: str | None = None  # the rejection reported, if any


def _next(keys: Registry, *, new_release_key: bool = True) -> bytes:
    keys.root_version += 1
    if new_release_key:
        keys.release_keys = [SigningKey.generate()]
    return keys.root_bytes()


def _rotated(keys: Registry) -> list[tuple[int, bytes]]:
    return [(2, _next(keys))]


def _signed_by_a_stranger(keys: Registry) -> list[tuple[int, bytes]]:
    keys.root_version = 2
    return [(2, keys.root_bytes(SigningKey.generate()))]


def _skipping_a_version(keys: Registry) -> list[tuple[int, bytes]]:
    keys.root_version = 3
    return [(2, keys.root_bytes())]  # published as 2, says 3


def _ahead_of_its_predecessor(keys: Registry) -> list[tuple[int, bytes]]:
    second = _next(keys, new_release_key=False)
    third = _next(keys)
    return [(3, third), (2, second)]  # 3 waits for 2


def _older(keys: Registry) -> list[tuple[int, bytes]]:
    return [(1, keys.root_bytes())]


ROOTS = {
    "the-next-root-rotates-the-release-key": RootCase(_rotated, 2),
    "a-root-signed-by-a-key-it-does-not-trust": RootCase(
        _signed_by_a_stranger, 1, "signature_threshold"
    ),
    "a-root-that-is-not-the-next-version": RootCase(_skipping_a_version, 1, "root_version"),
    "a-root-ahead-waits-for-the-one-between": RootCase(_ahead_of_its_predecessor, 3),
    "an-older-root-is-ignored": RootCase(_older, 1),
}


@pytest.mark.parametrize("case", sorted(ROOTS))
def test_each_root_rule(tmp_path: Path, sim_models: dict[str, Path], case: str) -> None:
    rule = ROOTS[case]

    async def scenario(sim: Sim) -> None:
        keys = sim.repo.keys
        old_release_keys = list(keys.release_keys)
        for version, document in rule.publish(keys):
            sim.broker.publish(sim.repo.topics.root(version), document)
        await sim.settled()
        if rule.reason is not None:
            rejected = await sim.event("rejected")
            assert rejected["reason"] == rule.reason
            assert "model" not in rejected
        else:
            assert not sim.events("rejected")
        assert sim.live.trust.root.version == rule.trusted
        if rule.trusted == 1:
            return
        stored = sim.state_dir / "trust" / "root.json"
        await sim.until(stored.exists, "the newest root saved")
        # Only the release keys of the newest root sign what the device accepts now.
        v1 = sim.repo.release(M, 1, sim_models["good"])
        sim.repo.send_assignment(sim.repo.keys.assignment_bytes(
            sim.repo.keys.assignment(1, v1.release), *old_release_keys))  # fmt: skip
        assert (await sim.event("rejected"))["reason"] == "signature_threshold"
        await sim.install(v1)
        # A restart starts from the saved root, not the provisioned one.
        await sim.restart(clean=True)
        assert sim.live.trust.root.version == rule.trusted
        assert sim.serving(M) == 1

    run_sim(tmp_path, SETTINGS, scenario)
