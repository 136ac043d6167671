"""Imports point one way (STYLE.md): a module imports only modules of a lower layer.

A back-reference for type hints only goes under ``if TYPE_CHECKING:`` and is not counted. A new
module must be given its layer here, which is the point: placing it is a design decision.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "receiver"

LAYERS: dict[str, int] = {
    # pure foundations
    "receiver": 0,
    "receiver.errors": 0,
    "receiver.statuses": 0,
    "receiver.models": 1,
    "receiver.metrics": 0,
    "receiver.observability": 0,
    "receiver.responses": 1,
    "receiver.ids": 0,
    "receiver.bodies": 1,
    "receiver.sessions": 1,
    "receiver.console_pages": 1,
    "receiver.signing": 1,
    "receiver.events": 1,
    "receiver.config": 2,
    "receiver.views": 2,
    "receiver.testing.strategies": 2,
    # data access, the MetaStudio client, pure tools
    "receiver.store_write": 2,
    "receiver.store_driver": 3,
    "receiver.store_process": 3,
    "receiver.store_child": 4,
    "receiver.queries": 3,
    "receiver.metastudio": 3,
    "receiver.diagnose": 3,
    "receiver.sender": 3,
    "receiver.testing.fake_metastudio": 3,
    "receiver.store": 4,
    "receiver.rejections": 4,
    "receiver.jobs": 4,
    "receiver.crosscheck": 4,
    "receiver.openapi": 4,
    "receiver.replay": 4,
    # where the pieces meet
    "receiver.migrate": 5,
    "receiver.crosscheck_run": 5,
    "receiver.intake": 5,
    "receiver.api_v1": 5,
    "receiver.simulate": 5,
    "receiver.cli_events": 5,
    "receiver.console_data": 5,
    "receiver.testing": 5,
    "receiver.testing.plugin": 6,
    "receiver.callbacks": 6,
    "receiver.live": 6,
    "receiver.console": 6,
    "receiver.api": 6,
    "receiver.app": 7,
    "receiver.http_limits": 7,
    # commands
    "receiver.serving": 8,
    "receiver.demo": 8,
    "receiver.cli_send": 8,
    "receiver.cli_sim": 9,
    "receiver.cli": 10,
    "receiver.__main__": 11,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def runtime_imports(path: Path) -> set[str]:
    """receiver.* modules imported at run time (not under ``if TYPE_CHECKING:``)."""
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
                found.add(candidate if candidate in LAYERS else node.module)

    Visitor().visit(ast.parse(path.read_text()))
    return found


MODULES = sorted(ROOT.rglob("*.py"))


def test_every_module_has_a_layer() -> None:
    missing = sorted(module_name(p) for p in MODULES if module_name(p) not in LAYERS)
    assert not missing, f"give these modules a layer in tests/test_architecture.py: {missing}"


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_imports_point_one_way(path: Path) -> None:
    name = module_name(path)
    layer = LAYERS[name]
    upward = sorted(
        f"{dep} (layer {LAYERS.get(dep)})"
        for dep in runtime_imports(path)
        if dep != name and dep != "receiver" and LAYERS.get(dep, 99) >= layer
    )
    assert not upward, f"{name} (layer {layer}) imports upward or sideways: {upward}"


def test_the_checker_sees_a_violation(tmp_path: Path) -> None:
    """The walk itself must find an upward import (a check that cannot fail is no check)."""
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "from receiver.app import create_app\n"
        "if TYPE_CHECKING:\n    from receiver.cli import main\n"
    )
    assert runtime_imports(probe) == {"receiver.app"}
