"""The package tree shows the architecture, and imports point one way (STYLE.md).

Each part of ``receiver`` (a package, or a module at the top) has a layer; a module imports at
run time only from parts of a lower layer, or from its own part. Inside a part, imports form no
circle. A back-reference for type hints only goes under ``if TYPE_CHECKING:`` and is not counted.
A new part must be given its layer here, which is the point: placing it is a design decision.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "receiver"

# The part of receiver a module belongs to -> its layer.
LAYERS: dict[str, int] = {
    # foundations
    "receiver": 0,  # receiver/__init__.py: the version
    "receiver.errors": 0,
    "receiver.metrics": 0,
    "receiver.observability": 0,
    "receiver.protocol": 1,  # signing, events, ids: pure
    "receiver.config": 2,
    # the durable store, then what reads it
    "receiver.store": 3,
    "receiver.fake_metastudio": 3,
    "receiver.crosscheck": 4,
    # hands stored events on; beside the cross-check (neither imports the other)
    "receiver.forward": 4,
    # stream health from the callbacks: writes findings (crosscheck), leased as forwarding is
    "receiver.rules": 5,
    # the service
    "receiver.intake": 6,
    "receiver.web": 7,
    # what users test with, and the commands
    "receiver.tools": 8,
    "receiver.testing": 9,
    "receiver.cli": 10,
    "receiver.__main__": 11,
}

# A module may be this long: split by purpose before (STYLE.md: "split before ~400 lines").
MAX_LINES = 400


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def part_of(module: str) -> str:
    """receiver.store.writer -> receiver.store; receiver.config -> receiver.config."""
    return ".".join(module.split(".")[:2])


MODULES = sorted(ROOT.rglob("*.py"))
NAMES = {module_name(p) for p in MODULES}


def runtime_imports(path: Path, known: set[str] = NAMES) -> set[str]:
    """receiver.* modules imported at run time (not under ``if TYPE_CHECKING:``), wherever the
    import statement stands (a function-level import counts: it runs too)."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name for a in node.names if a.name.split(".")[0] == "receiver")

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if not node.module or node.module.split(".")[0] != "receiver":
                return
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in known else node.module)

    Visitor().visit(ast.parse(path.read_text()))
    return found


GRAPH = {module_name(p): runtime_imports(p) for p in MODULES}


def test_every_part_has_a_layer() -> None:
    missing = sorted({part_of(n) for n in NAMES} - set(LAYERS))
    assert not missing, f"give these parts a layer in tests/test_architecture.py: {missing}"


def test_every_package_says_what_it_owns() -> None:
    for init in ROOT.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc) > 40, f"{init.relative_to(ROOT.parent)} needs a docstring"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_imports_point_one_way(path: Path) -> None:
    name = module_name(path)
    part = part_of(name)
    layer = LAYERS[part]
    upward = sorted(
        f"{dep} (layer {LAYERS.get(part_of(dep))})"
        for dep in GRAPH[name]
        if part_of(dep) != part and dep != "receiver" and LAYERS.get(part_of(dep), 99) >= layer
    )
    assert not upward, f"{name} ({part}, layer {layer}) imports upward or sideways: {upward}"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, each once, as a path from a module back to itself."""
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    def walk(start: str, node: str, path: list[str]) -> None:
        for dep in sorted(graph.get(node, ())):
            if dep == start:
                key = frozenset(path)
                if key not in seen:
                    seen.add(key)
                    found.append([*path, start])
            elif dep not in path and dep > start:
                walk(start, dep, [*path, dep])

    for start in sorted(graph):
        walk(start, start, [start])
    return found


def test_no_import_circle() -> None:
    graph = {n: {d for d in deps if d in GRAPH and d != n} for n, deps in GRAPH.items()}
    assert not cycles(graph)


def test_modules_stay_small() -> None:
    long = {
        module_name(p): n for p in MODULES if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"split these by purpose: {long}"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The walk itself must find an upward import (a check that cannot fail is no check)."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "from receiver.web.app import create_app\n"
        "if TYPE_CHECKING:\n    from receiver.cli import main\n"
    )
    assert runtime_imports(probe) == {"receiver.web.app"}


def test_the_circle_finder_sees_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
