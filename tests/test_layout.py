"""The layout is the architecture: rooms that import one way, no import cycle, no module over 400 lines.

Rooms: the shared core (qelm_core/*.py), qelm_core/quantum (circuits, fused engine, devices, hardware
cost), the two tasks qelm_core/lm and qelm_core/classify, qelm_core/bench, and flows/ (Prefect over
DVC). Imports inside functions count: they are how a lazy import would hide a cycle.
"""
from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO

ROOMS = ("quantum", "lm", "classify", "bench")
# which rooms each room may import (the core may import none; only the CLI sits above them all)
MAY_IMPORT = {"core": set(), "quantum": {"core"}, "lm": {"core", "quantum"}, "classify": {"core", "quantum"},
              "bench": {"core", "quantum", "lm", "classify"}, "cli": {"core", "quantum", "lm", "classify", "bench", "flows"},
              "flows": {"core", "quantum", "lm", "classify", "cli"}}


def module_name(path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for package in ("qelm_core", "flows") for p in sorted((REPO / package).rglob("*.py"))}


def room(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "flows":
        return "flows"
    if module == "qelm_core.cli":
        return "cli"
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else "core"


def imports(module: str) -> set[str]:
    """Project modules `module` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}  # `from pkg import module`
    return {m for m in found if m in MODULES and m != module}


def against_layout(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} -> {i}" for m, deps in graph.items() for i in deps
                  if room(i) != room(m) and room(i) not in MAY_IMPORT[room(m)])


def in_cycles(graph: dict[str, set[str]]) -> set[str]:
    """Modules on or behind an import cycle: peel those whose imports are all peeled until none is left."""
    done: set[str] = set()
    while ready := {m for m, deps in graph.items() if m not in done and deps <= done}:
        done |= ready
    return set(graph) - done


GRAPH = {m: imports(m) for m in MODULES}


def test_rooms_import_one_way():
    assert not against_layout(GRAPH), f"imports against the layout: {against_layout(GRAPH)}"


def test_no_import_cycle():
    assert not in_cycles(GRAPH), f"import cycle among {sorted(in_cycles(GRAPH))}"


def test_the_checks_can_fail():
    assert "qelm_core.quantum.fused" in GRAPH["qelm_core.lm.student"]  # the walk sees real imports
    assert against_layout({"qelm_core.lm.student": {"qelm_core.classify.models"}}) == [
        "qelm_core.lm.student -> qelm_core.classify.models"]
    assert against_layout({"qelm_core.tracking": {"qelm_core.lm.data"}, "qelm_core.lm.data": {"qelm_core.io"}}) == [
        "qelm_core.tracking -> qelm_core.lm.data"]
    assert in_cycles({"a": {"b"}, "b": {"a"}, "c": set(), "d": {"a"}}) == {"a", "b", "d"}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_stays_readable(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= 400, f"{MODULES[module].relative_to(REPO)}: {lines} lines; split it (modules <= ~400 lines)"
