"""Content-addressed stage folders: how a flow run reuses work already done.

This module is the whole caching mechanism of flows/ (documented in flows/pipeline.py):

* `dvc.yaml` is parsed once (`read_stages`): stage order, the params keys, deps and outputs of
  every stage. Nothing here repeats that list.
* `plan_stage` computes a stage's key: sha256 over the stage name, the *effective* values of the
  params keys dvc.yaml lists for it (params.yaml + the run's overrides), the DVC-style md5 of each
  of its deps (code files in the project; data deps in the folders of the stages that produced
  them) and, for a stage that reads `data` params, the content of the corpus files they name
  (DVC cannot see those: the corpus is not a dvc.yaml dep).
* The stage runs with `Paths(root=<work>/<stage>-<key[:16]>)`: the same functions DVC calls, but in
  a folder of its own. The outputs of upstream stages are hard-linked in, so the stage reads them at
  the paths it always uses, and `dvc.lock` there records their md5s (what tracking.py tags MLflow
  runs with, identical to the values `dvc repro` writes: the promotion gate compares them).
* The Prefect task of the stage uses that same key as its cache key (flows/tasks.py). Equal key
  means equal inputs, hence the same folder and the same outputs: the task is `Cached`, nothing
  runs. A different key (other params, changed data or code) is a different folder, so two flow
  runs with different overrides never write to the same place, while runs that share upstream
  inputs share those folders (a sweep prepares and scores the teacher once per vocabulary).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from qelm_core.config import ConfigError, Params
from qelm_core.io import atomic_write_text

CACHE_VERSION = "qelm-flows-1"  # bump to invalidate every stage folder written by an older scheme
INPUTS_FILE = "stage-inputs.json"
IGNORE_ALL = "# written by flows/: stage folders and locks\n*\n"


@dataclass(frozen=True)
class StageSpec:
    """One dvc.yaml stage, as the flows need it."""

    name: str
    params: tuple[str, ...]  # dotted params.yaml keys ("student.n_qubits", or a whole section "train")
    deps: tuple[str, ...]  # paths relative to the stage root
    outs: tuple[str, ...]  # outs + metrics + plots: every declared path the stage writes


def _entry_paths(entries) -> tuple[str, ...]:
    return tuple(e if isinstance(e, str) else next(iter(e)) for e in entries or [])


def read_stages(project: Path) -> list[StageSpec]:
    """The stages of `<project>/dvc.yaml` in file order (the order `dvc repro` runs this linear DAG)."""
    path = project / "dvc.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: no dvc.yaml; run from the repository root or pass project_root")
    stages = (yaml.safe_load(path.read_text()) or {}).get("stages") or {}
    specs = []
    for name, stage in stages.items():
        if any(not isinstance(p, str) for p in stage.get("params", [])):
            raise ConfigError(f"dvc.yaml: stage {name}: only params.yaml keys are supported in `params`")
        specs.append(StageSpec(name, tuple(stage.get("params", [])), tuple(stage.get("deps", [])),
                               _entry_paths(stage.get("outs")) + _entry_paths(stage.get("metrics"))
                               + _entry_paths(stage.get("plots"))))
    return specs


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dvc_md5(path: Path) -> str:
    """The md5 DVC 3 records in dvc.lock: of the bytes for a file, of the sorted listing + ".dir" for a folder."""
    if not path.is_dir():
        return file_md5(path)
    files = sorted((p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path).as_posix())
    listing = [{"md5": file_md5(p), "relpath": p.relative_to(path).as_posix()} for p in files]
    return hashlib.md5(json.dumps(listing, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def value_at(params: Params, key: str):
    node = params.model_dump(mode="json")
    for part in key.split("."):
        node = node[part]
    return node


def corpus_digest(params: Params) -> str:
    """sha256 of the documents `data` names, in stream order (their bytes are what prepare reads)."""
    from qelm_core.data import find_documents

    h = hashlib.sha256()
    for doc in find_documents(params.data):
        h.update(doc.name.encode() + b"\0" + hashlib.sha256(doc.raw).digest())
    return h.hexdigest()


@dataclass(frozen=True)
class Workspace:
    """The project (dvc.yaml, params, code, mlflow.db) and the folder where flow runs keep their work."""

    project: Path
    base: Path  # default <project>/.qelm (or $QELM_WORK_DIR); holds work/ (stage folders) and locks/
    specs: tuple[StageSpec, ...] = field(default=())

    @classmethod
    def open(cls, project: Path, base: Path | None = None) -> "Workspace":
        project = project.resolve()
        base = (base or Path(os.environ.get("QELM_WORK_DIR") or project / ".qelm")).resolve()
        for sub in ("work", "locks"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        for name in (".gitignore", ".dvcignore"):  # the folder ignores itself: git and dvc never walk it
            if not (base / name).exists():
                (base / name).write_text(IGNORE_ALL)
        return cls(project, base, tuple(read_stages(project)))

    work = property(lambda s: s.base / "work")
    locks = property(lambda s: s.base / "locks")

    @property
    def stage_names(self) -> list[str]:
        return [s.name for s in self.specs]

    def spec(self, name: str) -> StageSpec:
        return next(s for s in self.specs if s.name == name)

    def producer(self, path: str) -> StageSpec | None:
        return next((s for s in self.specs if path in s.outs), None)

    def upstream(self, name: str) -> list[StageSpec]:
        """Stages whose outputs `name` depends on, transitively, in dvc.yaml order."""
        needed, todo = set(), [name]
        while todo:
            for dep in self.spec(todo.pop()).deps:
                producer = self.producer(dep)
                if producer and producer.name not in needed:
                    needed.add(producer.name)
                    todo.append(producer.name)
        return [s for s in self.specs if s.name in needed]

    def code_path(self, dep: str) -> Path:
        """A dep no stage produces (code): in the project, else in the installed package's tree."""
        for root in (self.project, Path(__file__).resolve().parents[1]):
            if (root / dep).exists():
                return root / dep
        raise ConfigError(f"dvc.yaml: dependency {dep} not found in {self.project}")


@dataclass(frozen=True)
class StageWork:
    """Where and under which key one stage runs; `complete` = every declared output is already there."""

    stage: str
    key: str
    folder: Path
    complete: bool


def stage_inputs(ws: Workspace, name: str, params: Params, stage_params: Params, folders: dict[str, Path]) -> dict:
    """Everything the stage's outputs depend on (see the module docstring); its sha256 is the key.

    `params` are the values as the user wrote them (relative paths stay relative, so a clone elsewhere
    has the same keys); `stage_params` are the anchored ones the stage gets (to find the corpus).
    """
    spec = ws.spec(name)
    deps = {}
    for dep in spec.deps:
        producer = ws.producer(dep)
        if producer is not None and producer.name not in folders:
            raise ConfigError(f"stage {name} needs {dep} from stage {producer.name}, which has not run in this flow")
        deps[dep] = dvc_md5(folders[producer.name] / dep if producer else ws.code_path(dep))
    payload = {"version": CACHE_VERSION, "stage": name, "deps": deps,
               "params": {key: value_at(params, key) for key in spec.params}}
    if any(key == "data" or key.startswith("data.") for key in spec.params):
        payload["corpus"] = corpus_digest(stage_params)
    return payload


def key_of(payload: dict) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _place(target: Path, source: Path) -> None:
    """Put an upstream output at `target` as hard links (a real file or folder: MLflow refuses to log
    through symlinks; no bytes copied), or as a copy across file systems. Present already = kept:
    a run with the same key may be reading it, and equal keys mean equal dependency content."""
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        if source.is_dir():
            shutil.copytree(source, tmp, copy_function=_hardlink_or_copy)
        else:
            _hardlink_or_copy(source, tmp)
        try:
            os.rename(tmp, target)
        except OSError:  # a concurrent run with the same key placed it first
            if not target.exists():
                raise
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _hardlink_or_copy(source, target) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)


def plan_stage(ws: Workspace, name: str, params: Params, stage_params: Params,
               folders: dict[str, Path]) -> StageWork:
    """Key and folder of stage `name`, with the outputs of its upstream stages linked in and hashed in dvc.lock."""
    inputs = stage_inputs(ws, name, params, stage_params, folders)
    key = key_of(inputs)
    folder = ws.work / f"{name}-{key[:16]}"
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / INPUTS_FILE).exists():  # what the key was computed from: `diff` two of them to see why
        atomic_write_text(folder / INPUTS_FILE, json.dumps(inputs, indent=2, sort_keys=True) + "\n")
    lock: dict = {"schema": "2.0", "stages": {}}
    for up in ws.upstream(name):
        outs = []
        for out in up.outs:
            source = folders[up.name] / out
            if source.exists():
                _place(folder / out, source)
                outs.append({"path": out, "md5": dvc_md5(source)})
        lock["stages"][up.name] = {"outs": outs}
    atomic_write_text(folder / "dvc.lock", yaml.safe_dump(lock, sort_keys=False))
    complete = all((folder / out).exists() for out in ws.spec(name).outs)
    return StageWork(name, key, folder, complete)
