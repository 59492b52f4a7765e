"""Every route of the OpenAPI document, with hostile values in every path, query and body slot:
never a 5xx, never a status the document does not list.
"""

from __future__ import annotations

import json
from typing import Any

from tests.registry.conftest import Api
from tests.registry.hostile_input import (
    BIG,
    OPENAPI,
    documented,
)

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
    "/v1/experiments": {"model": "m", "control": 1, "treatment": 2, "split": 10, "group": "lab"},
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
        assert response.status in documented()[(method, route)], f"{where}: {response.status}"
        if response.status >= 400:
            assert "error" in json.loads(text), where
    storage = bounded_api.ctx.storage
    assert await storage.models() == []
    assert await storage.deployments() == []
    # The base body itself is valid: a device may have been created from it, nothing else.
    assert {d.device_id for d in await storage.devices()} <= {"d1", "fuzz-dev"}
