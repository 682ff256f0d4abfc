"""The shape of ``src/when_coordinator``: no import cycles, no module over 700 lines.

Imports are read with ``ast``, every one of them: at module level, inside functions (a lazy
import is still a dependency), and under ``TYPE_CHECKING`` (a type a module needs is a
dependency too; a protocol such as ``hub.view.HubView`` is how to need less). A submodule's
implicit import of its parent package is not an edge, as for any package. Each check runs per
layer (top-level package or module), so a layer is clean or not on its own.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
ROOT = "when_coordinator"
MAX_LINES = 700


@cache
def modules() -> dict[str, Path]:
    """Every module of the package, by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for path in sorted((SRC / ROOT).rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_package(name: str) -> bool:
    return modules()[name].name == "__init__.py"


def _imports(name: str) -> Iterator[str]:
    """The package's modules that ``name`` imports, anywhere in its source."""
    known = modules()
    tree = ast.parse(known[name].read_text(encoding="utf-8"))
    package = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == ROOT and alias.name in known:
                    yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.split(".")[0] != ROOT:
                continue
            submodules = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in known]
            if submodules and len(submodules) == len(node.names):
                yield from submodules  # ``from . import queries``: the modules only
            elif target in known:
                yield target
                yield from submodules


@cache
def graph() -> dict[str, frozenset[str]]:
    return {name: frozenset(_imports(name)) - {name} for name in modules()}


def cycles() -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    edges = graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


LAYERS = sorted({_layer(name) for name in modules()})


def _cycle_path(component: list[str]) -> str:
    """One concrete cycle through the component, for the failure message."""
    members, edges = set(component), graph()
    start = component[0]
    path, seen, node = [start], {start}, start
    while True:
        node = sorted(n for n in edges[node] if n in members)[0]
        path.append(node)
        if node in seen:
            return " -> ".join(path[path.index(node) :])
        seen.add(node)


@pytest.mark.parametrize("layer", LAYERS)
def test_no_import_cycles(layer: str) -> None:
    mine = [c for c in cycles() if any(_layer(m) == layer for m in c)]
    assert not mine, "import cycles:\n" + "\n".join(
        f"  {', '.join(c)}\n    e.g. {_cycle_path(c)}" for c in mine
    )


@pytest.mark.parametrize("layer", LAYERS)
def test_no_module_over_700_lines(layer: str) -> None:
    long = {
        name: count
        for name, path in modules().items()
        if _layer(name) == layer
        and (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_checker_sees_a_cycle_and_a_lazy_import() -> None:
    """The checker itself: known edges of the hub are found, so a passing run means something."""
    edges = graph()
    assert "when_coordinator.hub.view" in edges["when_coordinator.hub.operator"]  # TYPE_CHECKING
    assert "when_coordinator.hub.pgstore" in edges["when_coordinator.hub.database"]  # lazy
    assert "when_coordinator.hub.queries" in edges["when_coordinator.hub.operator"]  # from . import
    assert "when_coordinator.hub" not in edges["when_coordinator.hub.operator"]
    assert "when_coordinator.protocol" in edges["when_coordinator.hub.records"]
