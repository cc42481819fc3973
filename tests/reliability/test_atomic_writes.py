"""Every file a stage writes goes through a temp name and a rename (qelm_core/io.py), so a stage killed
mid-write never leaves a half-written output where DVC, MLflow or the next stage would read it.

Each stage runs in a subprocess with a Python audit hook that records every file opened for writing;
every recorded path under the stage outputs must be a temp file or lie inside a temp folder
(`.<name>.<random>.tmp`, what io.atomic_write_* and io.atomic_dir create).
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import run

pytestmark = pytest.mark.slow

OUTPUT_ROOTS = ("data", "models", "metrics", "plots", "reports")
TEMP_PART = re.compile(r"^\..+\.tmp$")

AUDITED_STAGE = """
import atexit, json, os, sys
written = set()
def hook(event, args):
    if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
        path, mode, flags = args
        if (mode and any(c in mode for c in "wax+")) or (not mode and flags & (os.O_WRONLY | os.O_RDWR)):
            written.add(os.path.abspath(os.fsdecode(path)))
sys.addaudithook(hook)
atexit.register(lambda: print("WRITTEN=" + json.dumps(sorted(written))))
sys.argv = ["qelm", sys.argv[1]]
from qelm_core.cli import main
main()
"""


def not_atomic(repo: Path, paths: list[str]) -> list[str]:
    """Written paths under the stage outputs that are neither a temp file nor inside a temp folder."""
    bad = []
    for p in paths:
        try:
            rel = Path(p).relative_to(repo)
        except ValueError:
            continue
        if rel.parts and rel.parts[0] in OUTPUT_ROOTS and not any(TEMP_PART.match(part) for part in rel.parts):
            bad.append(str(rel))
    return bad


def test_the_rule_catches_an_in_place_write(tmp_path):
    assert not_atomic(tmp_path, [str(tmp_path / "plots" / "x.png"), str(tmp_path / "mlruns" / "a")]) == ["plots/x.png"]
    assert not_atomic(tmp_path, [str(tmp_path / "plots" / ".x.png.abc.tmp"),
                                 str(tmp_path / "models" / ".student.k2.tmp" / "model.safetensors")]) == []


@pytest.mark.parametrize("stage", ["prepare", "teacher", "assign", "train", "evaluate", "register"])
def test_every_stage_output_is_written_by_temp_and_rename(repo_copy, stage):
    proc = run([sys.executable, "-c", AUDITED_STAGE, stage], repo_copy)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("WRITTEN="))
    written = json.loads(line.removeprefix("WRITTEN="))
    assert any(Path(p).is_relative_to(repo_copy) for p in written), "the hook saw no write in the repo"
    assert not_atomic(repo_copy, written) == [], f"`qelm {stage}` wrote in place"
