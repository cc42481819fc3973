"""Flow parameters: typed overrides of params.yaml (the UI's "Run" form), resolved and validated.

Each field's type, choices and range are read from the qelm_core/config.py field it overrides (no
second copy of the rules); the merged params are validated by the config loader every stage uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import ConfigDict, Field, create_model

from qelm_core.config import Params, Paths, load_params_dotted

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
    "embedded_tokens": ("student.embedded_tokens", "angle rows for the K most frequent ids, the rest as bits (0 = all)"),
    "readout": ("student.readout", "next token: basis state, or tied = overlap with its own angle row"),
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
    from qelm_core.llm import resolve_teacher

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
