"""Helpers for the reliability suite: run `qelm` as a user would, snapshot outputs, copy the tiny repo.

Every bad-input case asserts the same contract (see `assert_refused`): exit code != 0, exactly one
line on stderr that names the problem, and the stage's outputs absent or byte-for-byte unchanged.
"""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import yaml

from tests.conftest import run

STAGE_OUTS = ("data/prepared", "data/teacher", "models/student", "models/classical", "metrics", "plots", "reports")


def snapshot(root: Path, parts=STAGE_OUTS) -> dict[str, str]:
    """sha256 of every file under the stage outputs (and of dvc.lock): compare before/after a failure."""
    out = {}
    for part in (*parts, "dvc.lock"):
        base = root / part
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file()) if base.is_dir() else []
        for f in files:
            out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def qelm(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600):
    """`qelm ...` in a subprocess from this venv (the real entry point, its real exit code and stderr)."""
    return run(["qelm", *args], cwd, check=False, env=env, timeout=timeout)


def assert_refused(proc, *needles: str) -> str:
    """Non-zero exit, one line on stderr, naming each needle (case-insensitive); returns that line."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode != 0, f"exit 0:\n{proc.stdout[-2000:]}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{proc.stderr[-3000:]}"
    for needle in needles:
        assert needle.lower() in lines[0].lower(), f"{needle!r} not in {lines[0]!r}"
    assert "Traceback" not in proc.stderr
    return lines[0]


def set_params(repo: Path, **sections) -> None:
    """Merge {section: {key: value}} into repo/params.yaml (e.g. set_params(repo, train={"steps": 9}))."""
    from qelm_core.config import _merge

    path = repo / "params.yaml"
    path.write_text(yaml.safe_dump(_merge(yaml.safe_load(path.read_text()), sections), sort_keys=False))


@pytest.fixture
def repo_copy(tiny_repo, tmp_path) -> Path:
    """A private copy of the reproduced tiny pipeline (git, DVC cache, MLflow store, shards included)."""
    return Path(shutil.copytree(tiny_repo, tmp_path / "repo", symlinks=True))
