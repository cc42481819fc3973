"""Reproducibility: a forced rerun of the whole pipeline gives the same metrics, however loaded the
machine is and however the trainings are scheduled (a pool of worker processes or one after another).

The figures must not depend on the torch thread count a process happened to get: a README number a
fresh clone cannot reproduce (27.24 vs 26.55, same seed, data and code) makes every comparison noise.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import run

pytestmark = pytest.mark.slow

METRIC_FILES = ("metrics/teacher.json", "metrics/train.json", "metrics/eval.json")
MEASURED_NOT_COMPUTED = ("seconds", "per_s", "mlflow_run_id")  # wall-clock figures and ids differ by design


def results(repo: Path) -> dict[str, object]:
    out = {}
    for name in METRIC_FILES:
        for key, value in json.loads((repo / name).read_text()).items():
            if not any(part in key for part in MEASURED_NOT_COMPUTED):
                out[f"{name}:{key}"] = value
    return out


def differences(a: dict, b: dict, rel: float = 1e-6) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k)} vs {b.get(k)}" for k in keys
            if not (isinstance(a.get(k), float) and isinstance(b.get(k), float) and math.isclose(a[k], b[k], rel_tol=rel))
            and a.get(k) != b.get(k)]


def test_differences_sees_a_changed_metric():
    assert differences({"x": 1.0, "n": 2}, {"x": 1.0 + 1e-9, "n": 2}) == []
    assert differences({"x": 1.0}, {"x": 1.001}) == ["x: 1.0 vs 1.001"]
    assert differences({"x": 1.0}, {}) == ["x: 1.0 vs None"]


def test_forced_rerun_on_a_loaded_machine_gives_identical_metrics(repo_copy):
    run(["dvc", "repro", "--force"], repo_copy)
    first = results(repo_copy)
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:  # two CPU-bound competitors, and the trainings one after another in this process instead of a pool
        run(["dvc", "repro", "--force"], repo_copy, env={"QELM_TRAIN_WORKERS": "1"})
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    assert differences(first, results(repo_copy)) == []


def test_an_unchanged_retrain_writes_the_same_model_so_dvc_reuses_evaluate(repo_copy):
    """No run ids or timestamps in cached outputs: the MLflow run is found from the model's digest."""
    from qelm_core.weights import folder_digest

    student = repo_copy / "models" / "student"
    assert "run_id" not in json.loads((student / "config.json").read_text())
    digest = folder_digest(student)
    run(["dvc", "repro", "--force", "--single-item", "train"], repo_copy)
    assert folder_digest(student) == digest
    assert "up to date" in run(["dvc", "status", "evaluate", "register"], repo_copy).stdout


def test_a_change_to_the_projection_code_marks_the_teacher_stage_changed(repo_copy):
    """Honest code deps, end to end: editing qelm_core/lm/data.py (the teacher's projection) makes `dvc status`
    report the stages that import it, and only an unrelated module leaves them up to date."""
    run(["dvc", "repro"], repo_copy)  # start from an up-to-date pipeline
    with (repo_copy / "qelm_core" / "bench" / "config.py").open("a") as f:  # no stage imports the bench
        f.write("\n# edited\n")
    assert "up to date" in run(["dvc", "status"], repo_copy).stdout
    with (repo_copy / "qelm_core" / "lm" / "data.py").open("a") as f:
        f.write("\n# edited\n")
    status = run(["dvc", "status", "--json"], repo_copy).stdout
    changed = json.loads(status)
    assert {"prepare", "teacher", "assign", "train", "evaluate"} <= {k.split(":")[-1] for k in changed}, status
    assert all(any("qelm_core/lm/data.py" in str(entry) for entry in changed[k]) for k in changed
               if k.split(":")[-1] == "teacher"), status
