"""Upkeep: documents still in use are re-signed before they expire; nothing else is."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from edge_protocol import Assignment, Envelope, Release, utc_now
from model_registry.services.deployments import Target, deploy
from model_registry.services.devices import add_device
from model_registry.services.maintenance import run_maintenance
from model_registry.services.releases import PushRequest, push_model
from tests.registry.conftest import Api
from tests.support.models import ModelSet


def _expires(envelope: bytes, cls: type[Release] | type[Assignment]) -> object:
    return cls.from_dict(Envelope.from_bytes(envelope).signed).expires


async def test_in_use_documents_are_renewed_before_expiry(api: Api, onnx_models: ModelSet) -> None:
    ctx = api.ctx
    model = onnx_models.classifier.onnx_path.read_bytes()
    used = await push_model(ctx, PushRequest(name="clf", model=model))
    unused = await push_model(ctx, PushRequest(name="clf", model=model, allow_duplicate=True))
    await add_device(ctx, "dev-1", group="lab")
    await deploy(ctx, "clf", used.version, Target(group="lab"), created_by="test")

    nothing = await run_maintenance(ctx)
    assert nothing.releases_renewed == []
    assert nothing.assignments_renewed == []

    # 25 days later the 30-day documents are inside the 7-day renewal window.
    later = utc_now() + timedelta(days=25)
    aged = dataclasses.replace(ctx, clock=lambda: later)
    report = await run_maintenance(aged)
    assert report.releases_renewed == [f"clf/{used.version}"]
    assert report.assignments_renewed == ["dev-1"]

    renewed = await ctx.storage.get_release("clf", used.version)
    assert renewed.expires > later + timedelta(days=29)
    assert (
        Release.from_dict(Envelope.from_bytes(renewed.envelope).signed).artifact.sha256
        == used.sha256
    )
    untouched = await ctx.storage.get_release("clf", unused.version)
    assert untouched.envelope == unused.envelope
    device = await ctx.storage.get_device("dev-1")
    assert device.assignment_seq == 2, "a renewed assignment needs a new seq (docs/protocol.md 4.3)"
    assert device.assignment is not None
    assert _expires(device.assignment, Assignment) > later + timedelta(days=29)  # type: ignore[operator]


async def test_a_device_ahead_of_a_restored_registry_gets_a_seq_it_accepts(
    api: Api, onnx_models: ModelSet
) -> None:
    """After a restore from an older backup, the device's own seq (from its state) wins."""
    ctx = api.ctx
    model = onnx_models.classifier.onnx_path.read_bytes()
    release = await push_model(ctx, PushRequest(name="clf", model=model))
    await add_device(ctx, "dev-1", group="lab")
    state = {"online": True, "trust": {"root_version": 1, "assignment_seq": 41, "stale": False}}
    await ctx.storage.record_state("dev-1", state, True, utc_now())
    await deploy(ctx, "clf", release.version, Target(group="lab"), created_by="test")
    device = await ctx.storage.get_device("dev-1")
    assert device.assignment_seq == 42
    assert device.assignment is not None
    signed = Assignment.from_dict(Envelope.from_bytes(device.assignment).signed)
    assert signed.seq == 42
