"""docs/openapi-agent.json documents exactly the routes the app registers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from edge_agent.runtime import ModelRepository
from edge_agent.server import ServerConfig, create_app
from edge_agent.server.middleware import STATUS_BY_ERROR

DOC = Path(__file__).resolve().parents[2] / "docs" / "openapi-agent.json"
METHODS = {"get", "post", "put", "delete", "patch"}


def _document() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(DOC.read_text())
    return doc


def _app_routes() -> set[tuple[str, str]]:
    app = create_app(ModelRepository(), ServerConfig())
    return {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None  # aiohttp adds HEAD to GETs
    }


def test_every_route_is_documented_and_every_documented_route_exists() -> None:
    documented = {
        (method.upper(), path)
        for path, operations in _document()["paths"].items()
        for method in operations
        if method in METHODS
    }

    assert documented == _app_routes()


def test_path_parameters_are_declared_and_refs_resolve() -> None:
    doc = _document()
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)
            assert operation["responses"], (method, path)
    refs = re.findall(r'"\$ref": "#/([^"]+)"', DOC.read_text())
    for ref in refs:
        node: Any = doc
        for part in ref.split("/"):
            node = node[part]


# What any request can get before it reaches a route: a malformed or oversized head, a head that
# does not arrive in time, a connection past the cap.
ANY_REQUEST = {"400", "408", "431", "503"}
WITH_A_BODY = {"400", "401", "404", "408", "413", "415", "431", "500", "503"}


def test_every_status_the_server_can_answer_is_documented() -> None:
    doc = _document()
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            documented = set(operation["responses"])
            assert documented >= ANY_REQUEST, (method, path)
            if method == "post":
                assert documented >= WITH_A_BODY, (method, path)
    every = {
        status for ops in doc["paths"].values() for op in ops.values() for status in op["responses"]
    }
    assert {str(status) for status in STATUS_BY_ERROR.values()} <= every
    for name in (
        "MalformedRequest",
        "RequestTimeout",
        "HeadTooLarge",
        "Unavailable",
        "InternalError",
    ):
        schema = doc["components"]["responses"][name]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}
