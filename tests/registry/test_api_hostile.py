"""Hostile input to every route of the REST API: a clear JSON 4xx, documented, nothing stored.

Numbers beyond 64 bits, in the wrong spelling or out of range, in path segments, query
parameters and JSON bodies; multipart framing that does not parse; `.npz` files that are zip
bombs, pickles or lies about their own sizes. Each answer must be the status the OpenAPI
document lists for the route, with an `{"error": ...}` naming what is wrong.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
from typing import Any

import numpy as np
import pytest

from tests.registry.conftest import Api
from tests.registry.hostile_input import (
    BAD_NPZ,
    BIG,
    BOUNDARY,
    DATASET_MB,
    END,
    ESC,
    MULTIPART,
    documented,
    part,
)
from tests.support.models import ModelSet

# --- requests ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """One hostile request, the route it targets, and the answer it must get."""

    method: str
    route: str  # the route template, as the OpenAPI document names it
    path: str
    status: int
    complaint: str
    json_body: Any = None
    raw: bytes | None = None
    content_type: str | None = None


PUSH = ("POST", "/v1/models/{name}/versions")


def _push(
    body: bytes, status: int, complaint: str, content_type: str = MULTIPART, query: str = ""
) -> Case:
    return Case(*PUSH, "/v1/models/m/versions" + query, status, complaint,
                raw=body, content_type=content_type)  # fmt: skip


def _deploy(body: Any, status: int = 400, complaint: str = "version") -> Case:
    return Case("POST", "/v1/deployments", "/v1/deployments", status, complaint, json_body=body)


def _get(route: str, path: str, complaint: str, status: int = 400) -> Case:
    return Case("GET", route, path, status, complaint)


VERSION, DEPLOYMENT, DEVICE = (
    "/v1/models/{name}/versions/{version}", "/v1/deployments/{id}", "/v1/devices/{id}",
)  # fmt: skip


@functools.cache
def _cases(model: bytes) -> dict[str, Case]:
    cases = {
        f"version-{label}": _get(VERSION, f"/v1/models/m/versions/{text}", "version")
        for label, text in (("2**64", BIG), ("2**63", str(2**63)), ("negative", "-1"),
                            ("zero", "0"), ("superscript-two", "%C2%B2"),
                            ("arabic-digit", "%D9%A3"), ("hex", "0x10"), ("exponent", "1e3"),
                            ("underscore", "1_0"), ("space", "%201"), ("huge", "9" * 5000))
    }  # fmt: skip
    cases |= {
        "deployment-id-2**64": _get(DEPLOYMENT, f"/v1/deployments/{BIG}", "deployment id"),
        "deployment-id-text": _get(DEPLOYMENT, "/v1/deployments/one", "deployment id"),
        "events-2**64": _get(DEVICE, f"/v1/devices/d1?events={BIG}", "events"),
        "events-over-the-cap": _get(DEVICE, "/v1/devices/d1?events=1001", "events"),
        "telemetry-negative": _get(DEVICE, "/v1/devices/d1?telemetry=-5", "telemetry"),
        "events-twice": _get(DEVICE, "/v1/devices/d1?events=1&events=2", "events"),
        "group-twice": _get("/v1/devices", "/v1/devices?group=a&group=b", "group"),
        "model-query-overlong": _get("/v1/deployments", "/v1/deployments?model=" + "m" * 2000,
                                     "model"),
        "deploy-version-2**64": _deploy({"model": "m", "version": 2**64, "group": "g"}),
        "deploy-version-negative": _deploy({"model": "m", "version": -1, "group": "g"}),
        "deploy-version-float": _deploy({"model": "m", "version": 1.0, "group": "g"}),
        "deploy-version-text": _deploy({"model": "m", "version": "1", "group": "g"}),
        "deploy-version-boolean": _deploy({"model": "m", "version": True, "group": "g"}),
        "deploy-version-5000-digits": Case(
            "POST", "/v1/deployments", "/v1/deployments", 400, "malformed JSON",
            raw=b'{"model": "m", "group": "g", "version": ' + b"9" * 5000 + b"}",
            content_type="application/json"),
        "deploy-deep-nesting": Case(
            "POST", "/v1/deployments", "/v1/deployments", 400, "malformed JSON",
            raw=b"[" * 100_000, content_type="application/json"),
        "deploy-unknown-field": _deploy({"model": "m", "version": 1, "group": "g", "x": 1},
                                        complaint="unknown field"),
        "deploy-too-many-devices": _deploy({"model": "m", "version": 1,
                                            "devices": ["d"] * 10_001}, complaint="devices"),
        "deploy-body-over-1-mib": Case(
            "POST", "/v1/deployments", "/v1/deployments", 413, "larger than",
            json_body={"model": "m", "version": 1, "group": "g" * (2 * 1024 * 1024)}),
        "rollback-devices-not-ids": Case(
            "POST", "/v1/models/{name}/rollback", "/v1/models/m/rollback", 400, "devices",
            json_body={"devices": [1, 2]}),
        "token-name-with-escape-codes": Case("POST", "/v1/tokens", "/v1/tokens", 400, "name",
                                             json_body={"role": "viewer", "name": ESC}),
        "token-name-not-text": Case("POST", "/v1/tokens", "/v1/tokens", 400, "name",
                                    json_body={"role": "viewer", "name": 5}),
        "device-toml-injection": Case(
            "POST", "/v1/devices", "/v1/devices", 400, "mqtt_url",
            json_body={"device_id": "evil", "mqtt_url": 'mqtt://h:1"\n[server]\nlisten="0.0.0.0:80'}),
        "device-mqtt-url-port": Case("POST", "/v1/devices", "/v1/devices", 400, "mqtt_url",
                                     json_body={"device_id": "evil", "mqtt_url": "mqtt://h:99999"}),
        "multipart-without-boundary": _push(part("model", model) + END, 400, "boundary",
                                            "multipart/form-data"),
        "multipart-boundary-over-70": _push(part("model", model) + END, 400, "boundary",
                                            "multipart/form-data; boundary=" + "b" * 71),
        "multipart-empty-body": _push(b"", 400, "multipart"),
        "multipart-garbage": _push(b"hello", 400, "multipart"),
        "multipart-unterminated": _push(part("model", model)[:-2], 400, "multipart"),
        "multipart-non-ascii-part-name": _push(part("mödel", model) + END, 400,
                                               "unknown upload field"),
        "multipart-latin-1-part-header": _push(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="m\xf6del"\r\n\r\n'
            .encode("latin-1") + model + b"\r\n" + END, 400, "unknown upload field"),
        "multipart-duplicate-parts": _push(part("model", model) * 2 + END, 400, "twice"),
        "multipart-part-without-name": _push(part(None, model) + END, 400, "no name"),
        "multipart-part-header-without-colon": _push(
            f"--{BOUNDARY}\r\ngarbage-header-line\r\n\r\n".encode() + model + b"\r\n" + END,
            400, "multipart"),
        "multipart-nul-in-part-header": _push(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="mo\x00del"\r\n\r\n'
            .encode() + model + b"\r\n" + END, 400, "multipart"),
        "multipart-nested": _push(
            part("model", b"--QQ\r\n\r\nx\r\n--QQ--",
                  "Content-Type: multipart/mixed; boundary=QQ\r\n") + END, 400, "nested"),
        "multipart-header-over-8-kib": _push(
            part("model", model, f"X-Pad: {'p' * 9000}\r\n") + END, 400, "multipart"),
        "label-with-escape-codes": _push(part("model", model) + part("label", ESC.encode())
                                         + END, 400, "label"),
        "accuracy-limit-nan": _push(part("model", model) + part("accuracy_limit", b"nan")
                                    + END, 400, "accuracy_limit"),
        "max-regression-nan": _push(part("model", model) + part("max_regression", b"nan")
                                    + END, 400, "max_regression"),
        "max-regression-negative": _push(part("model", model) + part("max_regression", b"-1")
                                         + END, 400, "max_regression"),
        "min-accuracy-over-100": _push(part("model", model) + part("min_accuracy", b"101")
                                       + END, 400, "min_accuracy"),
        "min-accuracy-without-eval": _push(part("model", model) + part("min_accuracy", b"50")
                                           + END, 400, "min_accuracy"),
        "baseline-not-a-number": _push(part("model", model) + part("baseline", b"two")
                                       + END, 400, "baseline"),
        "baseline-without-eval": _push(part("model", model) + part("baseline", b"1")
                                       + END, 400, "baseline"),
        "force-not-a-flag": _push(part("model", model) + part("force", b"maybe")
                                  + END, 400, "force"),
        "raw-body-force-not-a-flag": _push(model, 400, "force", "application/octet-stream",
                                           "?force=yes"),
        "raw-body-query-twice": _push(model, 400, "twice", "application/octet-stream",
                                      "?label=a&label=b"),
    }  # fmt: skip
    for name, (make, status, complaint) in BAD_NPZ.items():
        for field in ("eval", "calibration", "reference"):
            body = part("model", model) + part("quantize", b"int8") + part(field, make()) + END
            cases[f"{field}-{name}"] = _push(body, status, complaint)
    return cases


CASE_IDS = sorted(_cases(b"").keys())


@pytest.mark.parametrize("case_id", CASE_IDS)
async def test_hostile_input_gets_a_documented_json_4xx_and_stores_nothing(
    bounded_api: Api, onnx_models: ModelSet, case_id: str
) -> None:
    case = _cases(onnx_models.classifier.onnx_path.read_bytes())[case_id]
    headers = bounded_api.auth()
    if case.content_type is not None:
        headers["Content-Type"] = case.content_type
    response = await bounded_api.client.request(
        case.method, case.path, json=case.json_body, data=case.raw, headers=headers
    )
    text = await response.text()
    assert response.status == case.status, text
    assert response.content_type == "application/json", text
    error = json.loads(text)["error"]
    assert case.complaint.lower() in error.lower(), error
    assert len(error) < 1000, "an error quotes what it refuses, shortened"
    assert "\x1b" not in error
    assert case.status in documented()[(case.method, case.route)], "OpenAPI lists it"

    storage = bounded_api.ctx.storage
    assert await storage.models() == []
    assert await storage.deployments() == []
    # The base body itself is valid: a device may have been created from it, nothing else.
    assert {d.device_id for d in await storage.devices()} <= {"d1", "fuzz-dev"}
    blobs = bounded_api.ctx.config.path(bounded_api.ctx.config.storage.blobs)
    assert not any(p.is_file() for p in blobs.rglob("*"))


async def test_an_eval_set_within_the_limits_is_read(
    bounded_api: Api, onnx_models: ModelSet
) -> None:
    """The limit is on what comes out: a well-formed set just under it passes."""
    model = onnx_models.classifier
    x = np.repeat(model.X_eval, 8, axis=0).astype(np.float64)
    y = np.repeat(model.y_eval, 8)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, X=x, y=y)
    assert x.nbytes < DATASET_MB * 1024 * 1024
    body = (part("model", model.onnx_path.read_bytes()) + part("quantize", b"int8")
            + part("eval", buffer.getvalue()) + END)  # fmt: skip
    response = await bounded_api.client.post(
        "/v1/models/m/versions",
        data=body,
        headers={**bounded_api.auth(), "Content-Type": MULTIPART},
    )
    assert response.status == 201, await response.text()
    assert "accuracy_int8" in (await response.json())["build"]
