"""Secrets never reach a file; two Prefect flow runs at once never mix; no code path unpickles or evals.

One fresh tiny project runs `dvc repro` and then two Prefect flow runs with different params at the
same time (each its own ephemeral Prefect home), all with a fake QISKIT_IBM_TOKEN in the environment
and fake IBM hardware in evaluate (noisy simulation + transpiled cost report). Then every file any of
it wrote -- logs, MLflow store and artifacts, DVC outputs and cache, Prefect databases -- is searched.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import yaml

from qelm_core.weights import folder_digest
from tests.conftest import REPO, TINY_PARAMS, make_pipeline_repo, run
from tests.reliability.test_faults import mlflow_client, start

TOKEN = "qelm-fake-ibm-token-5d41402abc4b2a76b9719d911017c592"
FLOW_PARAMS = {"a": ["layers=1", "steps=12"], "b": ["layers=3", "steps=16"]}


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(workspace root, repo, {flow name: its printed result}) after dvc repro + two concurrent flows."""
    base = tmp_path_factory.mktemp("secrets")
    repo = make_pipeline_repo(base / "repo", {**TINY_PARAMS, "evaluate": {"shots": 200, "noisy_positions": 2}})
    env = {"QISKIT_IBM_TOKEN": TOKEN, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "HF_HUB_OFFLINE": "1"}
    proc = run(["dvc", "repro"], repo, env=env)
    (base / "dvc-repro.log").write_text(proc.stdout + proc.stderr)
    flows = {name: start(["python", "-m", "qelm_core.cli", "flow", *[a for s in sets for a in ("--set", s)]], repo,
                         base / f"flow-{name}.log", env={**env, "PREFECT_HOME": str(base / f"prefect-{name}"),
                                                         "QELM_ROOT": str(repo)})
             for name, sets in FLOW_PARAMS.items()}
    results = {}
    for name, proc in flows.items():
        code = proc.wait(900)
        out = (base / f"flow-{name}.log").read_text()
        assert code == 0, f"flow {name} failed:\n{out[-2000:]}\n{(base / f'flow-{name}.log.err').read_text()[-4000:]}"
        results[name] = yaml.safe_load(out[out.index("mlflow_run:"):])
    return base, repo, results


@pytest.mark.slow
def test_concurrent_flow_runs_with_different_params_stay_separate(project):
    _, repo, results = project
    a, b = results["a"], results["b"]
    assert a["dvc_experiment"] != b["dvc_experiment"]
    upstream = {"prepare", "teacher", "assign"}  # `dvc repro` ran them: both runs got them from DVC's run-cache
    assert set(a["reused"]) == set(b["reused"]) == upstream
    client = mlflow_client(repo)
    runs = {name: client.get_run(r["mlflow_run"].rsplit("/", 1)[-1]) for name, r in results.items()}
    assert runs["a"].info.run_id != runs["b"].info.run_id
    for name, sets in FLOW_PARAMS.items():
        r, exp = runs[name], results[name]["dvc_experiment"]
        layers, steps = (s.split("=")[1] for s in sets)
        assert r.info.status == "FINISHED" and r.info.run_name == exp
        assert (r.data.params["student.layers"], r.data.params["train.steps"]) == (layers, steps)
        run(["dvc", "exp", "apply", exp], repo)  # each experiment holds its own outputs
        student = json.loads((repo / "models" / "student" / "config.json").read_text())
        assert student["layers"] == int(layers) and "run_id" not in student  # the run is found by the model's digest
        assert r.data.tags["qelm.model_digest"] == folder_digest(repo / "models" / "student")
        evaluated = json.loads((repo / "metrics" / "eval.json").read_text())
        assert r.data.metrics["ppl_student"] == pytest.approx(evaluated["ppl_student"])
        assert results[name]["metrics"]["ppl_student"] == pytest.approx(evaluated["ppl_student"])
    assert runs["a"].data.tags["prefect.flow_run_id"] != runs["b"].data.tags["prefect.flow_run_id"]


def files_containing(root: Path, needle: bytes) -> list[Path]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as f:
                if needle in f.read():
                    hits.append(path)
    return hits


@pytest.mark.slow
def test_the_ibm_token_is_written_nowhere(project):
    base, repo, _ = project
    written = [p for p in base.rglob("*") if p.is_file()]
    assert any(p.name == "mlflow.db" for p in written) and any("prefect-a" in str(p) for p in written)
    assert any(".dvc" in p.parts and "cache" in p.parts for p in written)
    assert files_containing(base, TOKEN.encode()) == []
    (base / "control.txt").write_text(f"token={TOKEN}")  # the search itself finds a token where there is one
    assert files_containing(base, TOKEN.encode()) == [base / "control.txt"]


# ---------------------------------------------------------------- no unpickling, eval or exec in our code

SOURCES = [p for d in ("qelm_core", "flows") for p in sorted((REPO / d).rglob("*.py"))]


def unsafe_calls(source: str) -> list[str]:
    """Calls that can execute code from data: pickle/joblib/dill loads, torch.load without
    weights_only=True, numpy loads with allow_pickle=True, pandas.read_pickle, yaml.load/unsafe_load,
    eval, exec."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        kw = {k.arg: k.value for k in node.keywords}
        true = lambda key: isinstance(kw.get(key), ast.Constant) and kw[key].value is True  # noqa: E731
        if (name in ("eval", "exec") and isinstance(func, ast.Name)
                or owner in ("pickle", "cPickle", "dill", "joblib", "cloudpickle") and name in ("load", "loads")
                or owner == "torch" and name == "load" and not true("weights_only")
                or owner in ("np", "numpy") and name == "load" and true("allow_pickle")
                or name == "read_pickle"
                or owner == "yaml" and (name in ("unsafe_load", "full_load") or name == "load" and "Loader" not in kw)
                or name == "Unpickler"):
            found.append(f"line {node.lineno}: {ast.unparse(node)[:80]}")
    return found


def test_the_scanner_catches_every_pattern():
    bad = ("import pickle, torch, yaml, numpy as np, pandas as pd\n"
           "pickle.load(f)\npickle.loads(b)\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
           "np.load(p, allow_pickle=True)\npd.read_pickle(p)\nyaml.load(s)\nyaml.unsafe_load(s)\n"
           "eval(s)\nexec(s)\npickle.Unpickler(f)\n")
    assert len(unsafe_calls(bad)) == 11
    good = "torch.load(p, weights_only=True)\nnp.load(p)\nyaml.safe_load(s)\nyaml.load(s, Loader=yaml.SafeLoader)\n"
    assert unsafe_calls(good) == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_no_code_path_unpickles_or_evaluates_data(path):
    assert len(SOURCES) > 30
    assert unsafe_calls(path.read_text()) == []
