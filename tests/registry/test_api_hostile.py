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
import struct
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from model_registry.api.app import create_app
from model_registry.config import ApiConfig
from tests.registry.conftest import Api
from tests.support.models import ModelSet

OPENAPI = Path(__file__).resolve().parents[2] / "model_registry" / "api" / "openapi.json"
BOUNDARY = "hostile-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
ESC = "\x1b[2J"
UPLOAD_MB, DATASET_MB = 4, 8


@functools.cache
def _documented() -> dict[tuple[str, str], set[int]]:
    document = json.loads(OPENAPI.read_text())
    return {
        (method.upper(), path): {int(status) for status in operation["responses"]}
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if method != "parameters"
    }


# --- .npz files that lie, built here with zipfile ------------------------------------------


def _npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return header.getvalue()


@functools.cache
def zip_bomb(mib: int = 320) -> bytes:
    """X: zeros of `mib` MiB as float64, deflated at level 9 (about 1 KiB per MiB)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        with archive.open("X.npy", "w", force_zip64=True) as member:
            member.write(_npy_header((mib * 1024 * 1024 // 64, 8)))
            block = bytes(1024 * 1024)
            for _ in range(mib):
                member.write(block)
        archive.writestr("y.npy", _npy_header((mib * 1024 * 1024 // 64,)))
    return buffer.getvalue()


@functools.cache
def understated_bomb() -> bytes:
    """A bomb whose zip headers claim 1 KiB per member: only what comes out can tell."""
    data = bytearray(zip_bomb(64))
    # The uncompressed size of each local header (offset 22) and directory entry (24); with
    # a size there, zipfile ignores the true one in the zip64 extra field.
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = data.find(signature)
        while start != -1:
            struct.pack_into("<I", data, start + offset, 1024)
            start = data.find(signature, start + 4)
    return bytes(data)


def _npz(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _npy(array: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def _duplicate_members() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("X.npy", _npy(np.zeros((2, 2))))
        with pytest.warns(UserWarning, match="Duplicate name"):
            archive.writestr("X.npy", _npy(np.ones((2, 2))))
    return buffer.getvalue()


GOOD_Y = _npy(np.zeros(4))
BAD_NPZ: dict[str, tuple[Callable[[], bytes], int, str]] = {
    "zip-bomb": (zip_bomb, 413, "expands to"),
    "understated-zip-bomb": (understated_bomb, 400, "npz"),
    "pickled-object-array": (lambda: _npz(**{"X.npy": _npy(np.array([{"a": 1}, None],
                                                                     dtype=object)),
                                             "y.npy": GOOD_Y}), 400, "pickles are refused"),
    "member-not-npy": (lambda: _npz(**{"X.npy": _npy(np.zeros((4, 2))), "y.csv": b"1,2"}),
                       400, "not an .npy"),
    "nested-archive": (lambda: _npz(**{"X.npz": _npz(**{"X.npy": _npy(np.zeros(2))})}),
                       400, "not an .npy"),
    "too-many-members": (lambda: _npz(**{f"a{n}.npy": GOOD_Y for n in range(40)}), 400,
                         "members"),
    "bad-npy-header": (lambda: _npz(**{"X.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': oops}"}),
                       400, "header"),
    "header-claims-more-than-it-holds": (
        lambda: _npz(**{"X.npy": _npy_header((1000, 1000)) + bytes(64), "y.npy": GOOD_Y}),
        400, "header"),
    "duplicate-members": (_duplicate_members, 400, "twice"),
    "a-bare-npy": (lambda: _npy(np.zeros((4, 2))), 400, "single .npy"),
    "broken-zip": (lambda: b"PK\x03\x04" + bytes(100), 400, "npz"),
    "not-a-zip": (lambda: b"X,y\n1,2\n", 400, "npz"),
}  # fmt: skip


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


def _part(name: str | None, data: bytes, headers: str = "") -> bytes:
    disposition = "form-data" + (f'; name="{name}"; filename="{name}"' if name else "")
    head = f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n{headers}\r\n"
    return head.encode() + data + b"\r\n"


END = f"--{BOUNDARY}--\r\n".encode()
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
BIG = str(2**64)


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
        "multipart-without-boundary": _push(_part("model", model) + END, 400, "boundary",
                                            "multipart/form-data"),
        "multipart-boundary-over-70": _push(_part("model", model) + END, 400, "boundary",
                                            "multipart/form-data; boundary=" + "b" * 71),
        "multipart-empty-body": _push(b"", 400, "multipart"),
        "multipart-garbage": _push(b"hello", 400, "multipart"),
        "multipart-unterminated": _push(_part("model", model)[:-2], 400, "multipart"),
        "multipart-non-ascii-part-name": _push(_part("mödel", model) + END, 400,
                                               "unknown upload field"),
        "multipart-latin-1-part-header": _push(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="m\xf6del"\r\n\r\n'
            .encode("latin-1") + model + b"\r\n" + END, 400, "unknown upload field"),
        "multipart-duplicate-parts": _push(_part("model", model) * 2 + END, 400, "twice"),
        "multipart-part-without-name": _push(_part(None, model) + END, 400, "no name"),
        "multipart-part-header-without-colon": _push(
            f"--{BOUNDARY}\r\ngarbage-header-line\r\n\r\n".encode() + model + b"\r\n" + END,
            400, "multipart"),
        "multipart-nul-in-part-header": _push(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="mo\x00del"\r\n\r\n'
            .encode() + model + b"\r\n" + END, 400, "multipart"),
        "multipart-nested": _push(
            _part("model", b"--QQ\r\n\r\nx\r\n--QQ--",
                  "Content-Type: multipart/mixed; boundary=QQ\r\n") + END, 400, "nested"),
        "multipart-header-over-8-kib": _push(
            _part("model", model, f"X-Pad: {'p' * 9000}\r\n") + END, 400, "multipart"),
        "label-with-escape-codes": _push(_part("model", model) + _part("label", ESC.encode())
                                         + END, 400, "label"),
        "accuracy-limit-nan": _push(_part("model", model) + _part("accuracy_limit", b"nan")
                                    + END, 400, "accuracy_limit"),
        "max-regression-nan": _push(_part("model", model) + _part("max_regression", b"nan")
                                    + END, 400, "max_regression"),
        "max-regression-negative": _push(_part("model", model) + _part("max_regression", b"-1")
                                         + END, 400, "max_regression"),
        "min-accuracy-over-100": _push(_part("model", model) + _part("min_accuracy", b"101")
                                       + END, 400, "min_accuracy"),
        "min-accuracy-without-eval": _push(_part("model", model) + _part("min_accuracy", b"50")
                                           + END, 400, "min_accuracy"),
        "baseline-not-a-number": _push(_part("model", model) + _part("baseline", b"two")
                                       + END, 400, "baseline"),
        "baseline-without-eval": _push(_part("model", model) + _part("baseline", b"1")
                                       + END, 400, "baseline"),
        "force-not-a-flag": _push(_part("model", model) + _part("force", b"maybe")
                                  + END, 400, "force"),
        "raw-body-force-not-a-flag": _push(model, 400, "force", "application/octet-stream",
                                           "?force=yes"),
        "raw-body-query-twice": _push(model, 400, "twice", "application/octet-stream",
                                      "?label=a&label=b"),
    }  # fmt: skip
    for name, (make, status, complaint) in BAD_NPZ.items():
        for field in ("eval", "calibration", "reference"):
            body = _part("model", model) + _part("quantize", b"int8") + _part(field, make()) + END
            cases[f"{field}-{name}"] = _push(body, status, complaint)
    return cases


CASE_IDS = sorted(_cases(b"").keys())


@pytest.fixture
async def bounded_api(api: Api) -> AsyncIterator[Api]:
    """The same registry, served with small upload and dataset limits, and device d1."""
    from model_registry.services.devices import add_device

    limits = ApiConfig(max_upload_mb=UPLOAD_MB, max_dataset_mb=DATASET_MB)
    config = dataclasses.replace(api.ctx.config, api=limits)
    ctx = dataclasses.replace(api.ctx, config=config)
    await add_device(ctx, "d1", group="lab")
    client = TestClient(TestServer(create_app(ctx)))
    await client.start_server()
    yield Api(client, ctx, api.admin_token)
    await client.close()


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
    assert case.status in _documented()[(case.method, case.route)], "OpenAPI lists it"

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
    body = (_part("model", model.onnx_path.read_bytes()) + _part("quantize", b"int8")
            + _part("eval", buffer.getvalue()) + END)  # fmt: skip
    response = await bounded_api.client.post(
        "/v1/models/m/versions",
        data=body,
        headers={**bounded_api.auth(), "Content-Type": MULTIPART},
    )
    assert response.status == 201, await response.text()
    assert "accuracy_int8" in (await response.json())["build"]


# --- every route of the OpenAPI document, with hostile values in every slot ------------------

SEGMENTS = [BIG, str(2**63), "-1", "0", "%C2%B2", "%00", "%1B%5B2J", "%E2%80%AE", "%FF",
            "1e3", "%20", "..%2F..", "a" * 3000]  # fmt: skip
VALUES: list[Any] = [2**64, -(2**64), -1, 0, 1.5, True, None, "", "x" * 2000, "\x1b[2J",
                     "\u202e", [], [[[[[]]]]], {}, {"a": 1}, ["\x00"] * 3]  # fmt: skip


# A valid body of each JSON route: the fuzz changes one field at a time.
BASE_BODIES: dict[str, dict[str, Any]] = {
    "/v1/tokens": {"role": "viewer", "name": "fuzz"},
    "/v1/deployments": {"model": "m", "version": 1, "group": "lab"},
    "/v1/rollouts": {"model": "m", "version": 1, "group": "lab", "policy": {"soak": 1}},
    "/v1/devices": {"device_id": "fuzz-dev", "group": "lab"},
    "/v1/models/{name}/rollback": {"group": "lab"},
    "/v1/devices/{id}": {"group": "lab"},
    "/ui/session": {"token": "not-a-token"},
}


def _properties(document: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    if "$ref" in schema:
        schema = document["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    names = list(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        names += _properties(document, part)
    return names


# Header values a client can send (aiohttp refuses control characters in its own requests).
HEADER_VALUES = ["", " ", "a" * 300, "a" * 3000, "%00", "two words", "\u00e9t\u00e9", "1" * 40]
FuzzRequest = tuple[str, str, str, Any, dict[str, str]]


def _parameter(document: dict[str, Any], parameter: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in parameter:
        found: dict[str, Any] = document["components"]["parameters"][
            parameter["$ref"].rsplit("/", 1)[1]
        ]
        return found
    return parameter


def _parameter_requests(
    document: dict[str, Any], method: str, route: str, plain: str, operation: dict[str, Any]
) -> list[FuzzRequest]:
    """Hostile values in each query parameter and request header the operation declares."""
    requests: list[FuzzRequest] = []
    for parameter in (_parameter(document, p) for p in operation.get("parameters", [])):
        name = parameter["name"]
        if parameter["in"] == "query":
            for value in SEGMENTS:
                requests.append((method.upper(), route, f"{plain}?{name}={value}", None, {}))
        if parameter["in"] == "header":
            body = BASE_BODIES.get(route)
            for value in HEADER_VALUES:
                requests.append((method.upper(), route, plain, body, {name: value}))
    return requests


def _fuzz_requests() -> list[FuzzRequest]:
    """(method, route, path, JSON body or None, headers) for every slot of every route."""
    document = json.loads(OPENAPI.read_text())
    requests: list[FuzzRequest] = []
    for route, operations in document["paths"].items():
        for method, operation in operations.items():
            if method == "parameters":
                continue
            slots = [p[1:-1] for p in route.split("/") if p.startswith("{")]
            plain = route
            for slot in slots:
                plain = plain.replace(f"{{{slot}}}", "1")
            for slot in slots:
                for value in SEGMENTS:
                    requests.append(
                        (
                            method.upper(),
                            route,
                            route.replace(f"{{{slot}}}", value)
                            .replace("{name}", "m")
                            .replace("{version}", "1")
                            .replace("{id}", "1")
                            .replace("{sha256}", "a" * 64),
                            None,
                            {},
                        )
                    )
            requests += _parameter_requests(document, method, route, plain, operation)
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None:
                for name in _properties(document, body["schema"]):
                    for value in VALUES:
                        hostile = {**BASE_BODIES[route], name: value}
                        requests.append((method.upper(), route, plain, hostile, {}))
    return requests


async def test_no_route_answers_hostile_values_with_a_5xx_or_an_undocumented_status(
    bounded_api: Api,
) -> None:
    requests = _fuzz_requests()
    assert len(requests) > 300, "every route, every slot"
    for method, route, path, body, headers in requests:
        kwargs: dict[str, Any] = {"headers": {**bounded_api.auth(), **headers}}
        if body is not None:
            kwargs["json"] = body
        response = await bounded_api.client.request(method, path, **kwargs)
        text = await response.text()
        where = f"{method} {path[:80]} {str(body)[:80]}"
        assert response.status < 500, f"{where}: {text}"
        assert response.status in _documented()[(method, route)], f"{where}: {response.status}"
        if response.status >= 400:
            assert "error" in json.loads(text), where
    storage = bounded_api.ctx.storage
    assert await storage.models() == []
    assert await storage.deployments() == []
    # The base body itself is valid: a device may have been created from it, nothing else.
    assert {d.device_id for d in await storage.devices()} <= {"d1", "fuzz-dev"}
