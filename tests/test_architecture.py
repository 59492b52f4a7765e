"""The import rules of the design: who may import whom."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("edge_protocol", "edge_common", "model_registry", "edge_agent")
FORBIDDEN = {
    "edge_agent": {"model_registry"},
    "model_registry": {"edge_agent"},
    # The two shared packages sit below both services, and edge_protocol stays pure.
    "edge_protocol": {"edge_agent", "model_registry", "edge_common"},
    "edge_common": {"edge_agent", "model_registry", "edge_protocol"},
}


def _imported_modules(package: str) -> set[tuple[str, str]]:
    """(file, top-level module) for every import in the package, relative ones resolved."""
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        found |= _imported_modules_of(path, package)
    return found


def _imported_modules_of(path: Path, package: str) -> set[tuple[str, str]]:
    """(file, top-level module) for every import in one file of `package`."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
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


# Modules that reach files, processes or the network: edge_protocol is pure functions of bytes.
IO_MODULES = {
    "os",
    "io",
    "pathlib",
    "tempfile",
    "shutil",
    "socket",
    "ssl",
    "subprocess",
    "fcntl",
    "mmap",
    "select",
    "selectors",
    "asyncio",
    "urllib",
    "http",
    "sqlite3",
    "glob",
}
IO_BUILTINS = {"open", "print", "input", "exec", "eval", "compile", "__import__"}


def test_edge_protocol_does_no_file_or_network_io() -> None:
    modules = {(f, m) for f, m in _imported_modules("edge_protocol") if m in IO_MODULES}
    assert not modules, f"edge_protocol imports I/O modules {sorted(modules)}"
    calls = set()
    for path in (ROOT / "edge_protocol").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            called = node.func if isinstance(node, ast.Call) else None
            if isinstance(called, ast.Name) and called.id in IO_BUILTINS:
                calls.add((path.name, called.id))
    assert not calls, f"edge_protocol calls I/O builtins {sorted(calls)}"


def _imports_below(folder: Path) -> set[tuple[str, str]]:
    """(file, dotted module) for every absolute import in the files under `folder`."""
    found = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found |= {(path.name, alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add((path.name, node.module))
    return found


@pytest.mark.parametrize("room", ["update", "storage", "uplink", "config"])
def test_the_agent_s_update_path_and_its_state_do_not_import_the_server(room: str) -> None:
    # A device must update itself whatever the HTTP server does: the two meet only in the
    # model repository and the metrics.
    bad = {
        (f, m)
        for f, m in _imports_below(ROOT / "edge_agent" / room)
        if m == "edge_agent.server" or m.startswith("edge_agent.server.")
        if m != "edge_agent.server.settings"  # the [server] table of device.toml
    }
    assert not bad, f"edge_agent/{room} imports the server: {sorted(bad)}"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Module -> the modules of our packages it imports (type-only imports included)."""
    paths = {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name in paths}
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                target = ".".join([*base, *([node.module] if node.module else [])])
                for alias in node.names:  # `from package import module` imports the module
                    submodule = f"{target}.{alias.name}"
                    edges.add(submodule if submodule in paths else target)
        graph[name] = {m for m in edges if m in paths and m != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for other in sorted(graph[module]):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            group = []
            while (top := stack.pop()) != module:
                group.append(top)
            if group:
                found.append(sorted([*group, module]))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_two_modules_import_each_other() -> None:
    # An import cycle (even a type-only one) means two modules are one concern, or one reaches
    # into the other's collaborators: pass those explicitly instead.
    cycles = _cycles(_import_graph())
    assert not cycles, f"import cycles: {cycles}"


def test_edge_common_uses_only_the_standard_library_and_paho_in_its_mqtt_adapter() -> None:
    # paho-mqtt, which both services depend on already, and only under edge_common/mqtt.
    allowed = set(sys.stdlib_module_names) | {"edge_common", "__future__"}
    bad = set()
    for path in (ROOT / "edge_common").rglob("*.py"):
        in_adapter = path.parent.name == "mqtt"
        for _file, m in _imported_modules_of(path, "edge_common"):
            if m not in allowed and not (in_adapter and m == "paho"):
                bad.add((str(path.relative_to(ROOT)), m))
    assert not bad, f"edge_common imports {sorted(bad)}"


def test_all_three_packages_import_together() -> None:
    import edge_agent
    import edge_protocol
    import model_registry

    assert {edge_agent.__version__, model_registry.__version__} == {edge_protocol.__version__}
