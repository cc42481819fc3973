"""Honest DVC dependencies: every project module a stage's entry point imports (directly or through
other project modules, module-level or inside a function) is listed in that stage's `deps` in both
dvc.yaml files, so changing the code behind an output makes `dvc status` report the stage as changed
instead of silently reusing a stale result."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

PACKAGES = ("qelm_core", "flows")
# Modules that cannot change a stage's outputs: MLflow bookkeeping and progress bars (no stage output is
# written through them) and empty package markers. (The thread policy is a dep: at n >= 11 it picks 2
# threads, and torch's reductions may then differ in the last bits.)
NOT_OUTPUT_SHAPING = {"qelm_core/__init__.py", "qelm_core/classify/__init__.py", "qelm_core/lm/__init__.py",
                      "qelm_core/quantum/__init__.py", "qelm_core/tracking.py",
                      "qelm_core/run_lease.py", "qelm_core/progress.py"}


def module_file(name: str) -> Path | None:
    path = REPO.joinpath(*name.split("."))
    for candidate in (path / "__init__.py", path.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def imported_names(path: Path):
    package = path.relative_to(REPO).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = list(package[: len(package) - node.level + 1]) if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            yield module
            yield from (f"{module}.{a.name}" for a in node.names)  # `from pkg import module`


def code_deps(entry: Path) -> set[str]:
    """Every project source file reachable from `entry` by imports, as repo-relative paths."""
    seen, todo = set(), [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_names(path):
            parts = name.split(".")
            if parts[0] in PACKAGES:
                todo += [f for i in range(1, len(parts) + 1) if (f := module_file(".".join(parts[:i])))]
    return {str(p.relative_to(REPO)) for p in seen}


def entry_point(cmd: str) -> Path:
    """`qelm <stage>` / `qelm classify-<stage>` -> the stage module cli.py dispatches to."""
    stage = cmd.split()[1]
    if stage.startswith("classify-"):
        return REPO / "qelm_core" / "classify" / "stages" / f"{stage.removeprefix('classify-')}.py"
    return REPO / "qelm_core" / "lm" / "stages" / f"{stage}.py"


STAGES = [(f, name, stage) for f in ("dvc.yaml", "classify/dvc.yaml")
          for name, stage in yaml.safe_load((REPO / f).read_text())["stages"].items()]


def test_import_walk_sees_function_level_and_relative_imports():
    deps = code_deps(REPO / "qelm_core" / "lm" / "stages" / "evaluate.py")
    assert {"qelm_core/lm/student.py", "qelm_core/quantum/fused.py", "qelm_core/weights.py", "qelm_core/io.py"} <= deps  # weights.py: relative imports


@pytest.mark.parametrize("dvc_file, name, stage", STAGES, ids=[f"{f}:{n}" for f, n, _ in STAGES])
def test_every_imported_module_is_a_declared_dependency(dvc_file, name, stage):
    entry = entry_point(stage["cmd"])
    assert entry.is_file(), f"{dvc_file} stage {name}: no entry module {entry}"
    missing = sorted(code_deps(entry) - set(stage.get("deps", [])) - NOT_OUTPUT_SHAPING)
    assert not missing, f"{dvc_file} stage {name} runs code it does not list in deps: {missing}"
