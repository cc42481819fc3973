"""A flow run is a DVC experiment: a workspace of its own, DVC's run-cache for work already done, `dvc exp show`.

The workspace is a `git clone --shared` of HEAD plus the project's uncommitted changes under
.dvc/tmp/qelm-flows/<name>, on the project's DVC cache, with the overrides in its params.yaml (what
`dvc exp run -S` does). Runs with different overrides never write to the same place; runs with the
same upstream params share those stages through the run-cache. Teacher shards (resumable, content-keyed
work outside DVC's outputs) are shared through the project's data/.shards.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import yaml

from qelm_core.config import EXIT_TRANSIENT, ConfigError, QelmError

FOLDER = Path(".dvc") / "tmp" / "qelm-flows"  # inside .dvc/: DVC and git never look there
REUSED = ("is cached - skipping run", "didn't change, skipping")  # run-cache hit / unchanged
PUSH_HINT = "Use `dvc push`"  # DVC's hint for a person at a terminal (the workspace auto-stages its git hints away)


class StageFailed(QelmError):
    """A stage exited non-zero: the message is its one-line error (or DVC's)."""


class TransientStageFailure(Exception):
    """A stage exited with EXIT_TRANSIENT (I/O, memory, network): worth a retry."""


@dataclass(frozen=True)
class Experiment:
    project: Path  # the repository the run belongs to
    root: Path  # the run's workspace
    name: str  # the DVC experiment's name = the MLflow run's name


def stage_names(project: Path) -> list[str]:
    """The stages of <project>/dvc.yaml in file order (the order `dvc repro` runs this linear DAG)."""
    path = project / "dvc.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: no dvc.yaml; run from the repository root or set QELM_ROOT")
    return list((yaml.safe_load(path.read_text()) or {}).get("stages", {}))


def stage_metric_files(root: Path, stage: str) -> list[Path]:
    spec = yaml.safe_load((root / "dvc.yaml").read_text())["stages"][stage]
    return [root / (e if isinstance(e, str) else next(iter(e))) for e in spec.get("metrics", [])]


def _git(cwd: Path, *args: str, **kw) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True, **kw).stdout


def _dvc(cwd: Path, *args: str, env: dict | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise StageFailed(f"dvc {' '.join(args)} in {cwd}: {_last_error(proc.stdout + proc.stderr)}")
    return proc.stdout


def _last_error(output: str) -> str:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    ours = [ln for ln in lines if ln.startswith("error: ")]  # the qelm CLI's one line
    dvc = [ln for ln in lines if ln.startswith("ERROR:")]
    return (ours or dvc or lines or ["no output"])[-1]


def set_params(path: Path, dotted: dict[str, Any]) -> None:
    """Write overrides into params.yaml with the code behind `dvc exp run -S` (comments and order kept;
    `++` adds a key the file leaves to its default). Values go in as JSON, which Hydra's grammar reads."""
    from dvc.utils.hydra import apply_overrides

    apply_overrides(path, [f"++{key}={json.dumps(value)}" for key, value in dotted.items()])


def _link_missing(project: Path, root: Path, relative: str) -> None:
    """A relative corpus / teacher path the project has but git does not (ignored data): linked in."""
    if relative and not Path(relative).is_absolute() and (project / relative).exists() and not (root / relative).exists():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).symlink_to(project / relative)


def open_experiment(project: Path, name: str, dotted: dict[str, Any], params) -> Experiment:
    """A workspace for one run: HEAD + the project's uncommitted changes + the overrides."""
    root = project / FOLDER / name
    if root.exists():
        shutil.rmtree(root)  # a failed earlier run of this name: start clean
    root.parent.mkdir(parents=True, exist_ok=True)
    head = _git(project, "rev-parse", "HEAD").strip()
    _git(project, "clone", "-q", "--shared", "--no-checkout", str(project), str(root))
    _git(root, "checkout", "-q", "--detach", head)
    diff = _git(project, "diff", "HEAD", "--binary")
    if diff:
        _git(root, "apply", "--binary", input=diff)
    for rel in _git(project, "ls-files", "-z", "--others", "--exclude-standard").split("\0"):
        if rel and (project / rel).is_file():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(project / rel, root / rel)
    cache = _dvc(project, "cache", "dir").strip()
    _dvc(root, "config", "--local", "cache.dir", cache)
    _dvc(root, "config", "--local", "core.autostage", "true")  # `git add` what a stage changed: `dvc exp save` commits it
    (project / "data" / ".shards").mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    (root / "data" / ".shards").symlink_to(project / "data" / ".shards")
    with (root / ".git" / "info" / "exclude").open("a") as f:  # .gitignore's "data/.shards/" misses a link
        f.write("\ndata/.shards\n")
    _link_missing(project, root, params.data.corpus)
    _link_missing(project, root, params.teacher.model)
    set_params(root / "params.yaml", dotted)
    return Experiment(project, root, name)


def stage_env(exp: Experiment, tracking_uri: str, flow_run_id: str | None) -> dict[str, str]:
    """The stage's environment: the project's MLflow store, the run's name, a git identity for the commit."""
    env = {k: v for k, v in os.environ.items() if k != "QELM_ROOT"}
    env.update(MLFLOW_TRACKING_URI=tracking_uri, QELM_RUN_NAME=exp.name, PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # `qelm` of this env
    if flow_run_id:
        env["QELM_PREFECT_FLOW_RUN_ID"] = flow_run_id
    if not subprocess.run(["git", "config", "user.email"], cwd=exp.project, capture_output=True, text=True).stdout.strip():
        for role in ("AUTHOR", "COMMITTER"):
            env.setdefault(f"GIT_{role}_NAME", "qelm flows")
            env.setdefault(f"GIT_{role}_EMAIL", "qelm-flows@localhost")
    return env


def run_stage(exp: Experiment, stage: str, env: dict[str, str], log: Callable[[str], None]) -> tuple[bool, dict]:
    """`dvc repro --single-item <stage>` in the run's workspace -> (reused, the stage's metrics files)."""
    proc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "--single-item", stage], cwd=exp.root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines = []
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            lines.append(line)
            if not line.startswith(PUSH_HINT):
                log(line)
    if proc.wait():
        output = "\n".join(lines)
        if re.search(rf"exited with {EXIT_TRANSIENT}\b", output):
            raise TransientStageFailure(f"{stage}: {_last_error(output)}")
        raise StageFailed(f"{stage}: {_last_error(output)}")
    reused = any(marker in line for line in lines for marker in REUSED)
    metrics: dict = {}
    for path in stage_metric_files(exp.root, stage):
        metrics.update(yaml.safe_load(path.read_text()) if path.exists() else {})
    return reused, metrics


def save_experiment(exp: Experiment, stages: list[str], env: dict[str, str]) -> None:
    """Commit the run (the `stages` it ran) as a DVC experiment, push it to the project (the workspace's
    origin), remove the workspace."""
    # cache: false metrics/plots that git does not track yet are committed too (dvc exp save skips them)
    untracked = [p for p in _git(exp.root, "ls-files", "-z", "--others", "--exclude-standard").split("\0") if p]
    _dvc(exp.root, "exp", "save", "-n", exp.name, *[a for p in untracked for a in ("-I", p)], *stages, env=env)
    _dvc(exp.root, "exp", "push", "--no-cache", "origin", exp.name, env=env)  # the outputs are in the shared cache
    shutil.rmtree(exp.root)
