"""Flow parameters: typed overrides of params.yaml (the UI's "Run" form) and their resolution.

Every field is optional: None keeps the value in params.yaml. Each field's type, choices and range
are read from the field of qelm_core/config.py it overrides (`setting`), so the form shows them and
rejects a value out of range before the run starts, without a second copy of the rules; the merged
params are then validated by `qelm_core.config.load_params`, the same code every stage uses.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
import yaml
from pydantic import BaseModel, ConfigDict, Field, create_model

from qelm_core.config import ConfigError, Params, Paths, load_params_dotted

BOUNDS = {annotated_types.Ge: ("ge", ">="), annotated_types.Gt: ("gt", ">"), annotated_types.Le: ("le", "<="),
          annotated_types.Lt: ("lt", "<")}

# form field -> (dotted params.yaml key, what it is)
SETTINGS = {
    "seed": ("seed", "the students' init and batches (and a random basis assignment)"),
    "corpus": ("data.corpus", "'shakespeare', a .txt file or a folder of them"),
    "max_tokens": ("data.max_tokens", "0 = the whole corpus"),
    "teacher_model": ("teacher.model", "'smollm2', a .gguf file or a HF folder"),
    "n_qubits": ("student.n_qubits", "vocabulary = 2^n entries"),
    "context": ("student.context", "previous tokens the student sees"),
    "layers": ("student.layers", "trainable layers after each encoded token"),
    "reupload_every": ("student.reupload_every", "the token again before every k-th layer (0 = once)"),
    "entangler": ("student.entangler", "ring of each layer: cphase (trainable phases), cz or cnot"),
    "ancillas": ("student.ancillas", "extra wires without data, post-selected on 0"),
    "encoding": ("student.encoding", "embedding = trainable angles, bits = none"),
    "engine": ("student.engine", "fused = qelm's statevector code (default.qubit only)"),
    "device_name": ("device.name", "where the circuits run"),
    "device_backend": ("device.backend", "qiskit.remote: FakeManilaV2, ibm_..."),
    "shots": ("device.shots", "empty = exact"),
    "alpha": ("train.alpha", "weight of the distillation term (0 = hard labels only)"),
    "temperature": ("train.temperature", "distillation temperature"),
    "lr": ("train.lr", "Adam learning rate"),
    "steps": ("train.steps", "training steps per student"),
    "batch_size": ("train.batch_size", "examples per step"),
}
KEYS = {name: key for name, (key, _) in SETTINGS.items()}


def setting(key: str, what: str) -> tuple[Any, Any]:
    """(type | None, Field) for the override of the dotted params.yaml `key`, with that config field's
    type and bounds, and a description that names the key and states the range."""
    *section, leaf = key.split(".")
    model = Params.model_fields[section[0]].annotation if section else Params
    info = model.model_fields[leaf]
    bounds = {BOUNDS[type(m)][0]: getattr(m, BOUNDS[type(m)][0]) for m in info.metadata if type(m) in BOUNDS}
    shown = ", ".join(f"{BOUNDS[type(m)][1]} {getattr(m, BOUNDS[type(m)][0])}" for m in info.metadata if type(m) in BOUNDS)
    return info.annotation | None, Field(None, description=f"{key}: {what}" + (f" ({shown})" if shown else ""), **bounds)


_Settings = create_model("_Settings", __config__=ConfigDict(extra="forbid"),
                         **{name: setting(key, what) for name, (key, what) in SETTINGS.items()})


class Overrides(_Settings):
    """Changes to params.yaml for this run; empty fields keep the file's value."""

    extra: dict[str, Any] = Field(default_factory=dict,
                                  description='any other key, dotted: {"evaluate.shots": 1000, "train.eval_every": 50}')

    def dotted(self) -> dict[str, Any]:
        out = {KEYS[name]: value for name, value in self if name != "extra" and value is not None}
        return {**out, **self.extra}


@dataclass(frozen=True)
class RunConfig:
    """Everything one pipeline run needs, decided (and validated) before any stage starts."""

    project: Path  # the repository (its dvc.yaml, DVC cache, MLflow store)
    params: Params  # params.yaml + overrides, validated
    dotted: dict[str, Any]  # the overrides as dotted params.yaml keys: what the run's workspace gets
    tracking_uri: str
    label: str = ""  # a sweep point's name ("" for a single run)


def anchor(params: Params, project: Path) -> Params:
    """Corpus / teacher paths relative to the project made absolute (for checks made from elsewhere)."""
    data, teacher = params.data, params.teacher
    if not Path(data.corpus).is_absolute() and (project / data.corpus).exists():
        data = data.model_copy(update={"corpus": str(project / data.corpus)})
    if not Path(teacher.model).is_absolute() and (project / teacher.model).exists():
        teacher = teacher.model_copy(update={"model": str(project / teacher.model)})
    return params.model_copy(update={"data": data, "teacher": teacher})


def preflight(params: Params, paths: Paths) -> None:
    """Fail in seconds on what would otherwise fail minutes later: device, gradient method, teacher, server."""
    from qelm_core import tracking
    from qelm_core.quantum.devices import diff_method_for
    from qelm_core.lm.teacher import resolve_teacher

    diff_method_for(params.device, training=False)
    resolve_teacher(params.teacher.model)
    if tracking.tracking_uri(paths).startswith(("http://", "https://")):
        tracking.configure(paths)


def resolve(overrides: Overrides, project_root: str | None = None, extra: dict[str, Any] | None = None,
            label: str = "") -> RunConfig:
    from flows.experiment import stage_names
    from qelm_core import tracking

    project = Path(project_root).resolve() if project_root else Paths.here().root
    stage_names(project)  # no dvc.yaml: one line now
    dotted = {**overrides.dotted(), **(extra or {})}
    params = load_params_dotted(project / "params.yaml", dotted)
    preflight(anchor(params, project), Paths(project))
    return RunConfig(project, params, dotted, tracking.tracking_uri(Paths(project)), label)


class SweepGrid(BaseModel):
    """Student configurations to compare: every n_qubits x layers x alpha, each with every seed."""

    model_config = ConfigDict(extra="forbid")

    n_qubits: list[int] = Field(default_factory=list, description="student.n_qubits values; empty = params.yaml. "
                                "The first one's winner is registered (perplexities are compared per vocabulary)")
    layers: list[int] = Field([2, 4], description="student.layers values")
    alpha: list[float] = Field([0.0, 0.5], description="train.alpha values (0 = no distillation, hard labels only)")
    seeds: list[int] = Field([0, 1, 2], description="seeds per configuration (at least 3 for a spread)")
    steps: int | None = Field(200, description="train.steps for every configuration (a short budget keeps a "
                                                "12-point sweep in minutes); empty = params.yaml")

    def points(self, base: Params) -> list[tuple[str, dict[str, Any]]]:
        """[(label, dotted overrides)] in a stable order."""
        out = []
        for n, layers, alpha, seed in itertools.product(self.n_qubits or [base.student.n_qubits], self.layers,
                                                        self.alpha, self.seeds):
            # one student per kind per point: the grid's seeds take the place of train.seeds
            point = {"student.n_qubits": n, "student.layers": layers, "train.alpha": alpha, "seed": seed,
                     "train.seeds": 1}
            if self.steps is not None:
                point["train.steps"] = self.steps
            out.append((f"q{n}-l{layers}-a{alpha:g}-s{seed}", point))
        return out


def resolve_grid(grid: SweepGrid, overrides: Overrides, project_root: str | None = None) -> list[RunConfig]:
    """One RunConfig per grid point, all validated before anything runs (the label names a bad one)."""
    if not (grid.layers and grid.alpha and grid.seeds):
        raise ConfigError("sweep grid: layers, alpha and seeds each need at least one value")
    base = resolve(overrides, project_root)
    runs = []
    for label, point in grid.points(base.params):
        try:
            runs.append(resolve(overrides, project_root, point, label))
        except ConfigError as err:
            raise ConfigError(f"sweep point {label}: {err}") from None
    return runs


def upstream_signature(run: RunConfig, stages: list[str]) -> tuple:
    """Equal for runs whose `stages` get equal params (DVC restores the later ones from the run-cache)."""
    spec = yaml.safe_load((run.project / "dvc.yaml").read_text())["stages"]
    keys = sorted({k for s in stages for k in spec[s].get("params", [])})
    values = run.params.model_dump(mode="json")
    return tuple((k, repr(_value_at(values, k))) for k in keys)


def _value_at(node: dict, key: str):
    for part in key.split("."):
        node = node[part]
    return node
