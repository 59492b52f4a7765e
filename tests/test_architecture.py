"""The import rules of the design: who may import whom."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge_protocol", "model_registry", "edge_agent")
FORBIDDEN = {
    "edge_agent": {"model_registry"},
    "model_registry": {"edge_agent"},
    "edge_protocol": {"edge_agent", "model_registry"},
}


def _imported_modules(package: str) -> set[tuple[str, str]]:
    """(file, top-level module) for every import in the package, relative ones resolved."""
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found |= {(path.name, alias.name.split(".")[0]) for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                module = package if node.level else (node.module or "")
                found.add((path.name, module.split(".")[0]))
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_packages_do_not_import_each_other(package: str) -> None:
    bad = {(f, m) for f, m in _imported_modules(package) if m in FORBIDDEN[package]}
    assert not bad, f"{package} imports {sorted(bad)}"


def test_edge_protocol_uses_only_the_standard_library_and_cryptography() -> None:
    allowed = set(sys.stdlib_module_names) | {"cryptography", "edge_protocol", "__future__"}
    bad = {(f, m) for f, m in _imported_modules("edge_protocol") if m not in allowed}
    assert not bad, f"edge_protocol imports {sorted(bad)}"


def test_all_three_packages_import_together() -> None:
    import edge_agent
    import edge_protocol
    import model_registry

    assert {edge_agent.__version__, model_registry.__version__} == {edge_protocol.__version__}
