"""Flow parameters: typed overrides of params.yaml (the UI's "Run" form), resolved and validated.

Each field's type, choices and range are read from the qelm_core/config.py field it overrides (no
second copy of the rules); the merged params are validated by the config loader every stage uses.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, create_model

from qelm_core.config import Params, Paths, load_params_dotted

RANGE = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}  # the bounds config fields use

# the Run form: field -> the dotted params.yaml key it overrides (any other key goes in `extra`)
KEYS = {"seed": "seed", "corpus": "data.corpus", "max_tokens": "data.max_tokens", "teacher_model": "teacher.model",
        **{key: f"student.{key}" for key in ("n_qubits", "context", "layers", "reupload_every", "entangler", "ancillas",
                                             "encoding", "embedded_tokens", "readout", "engine")},
        "device_name": "device.name", "device_backend": "device.backend", "shots": "device.shots",
        **{key: f"train.{key}" for key in ("alpha", "temperature", "lr", "steps", "batch_size")}}


def setting(key: str) -> tuple[Any, Any]:
    """(type | None, Field) for the override of the dotted params.yaml `key`, with that config field's
    type and bounds, and its description naming the key and stating the range."""
    *section, leaf = key.split(".")
    info = (Params.model_fields[section[0]].annotation if section else Params).model_fields[leaf]
    bounds = {name: getattr(m, name) for m in info.metadata for name in RANGE if hasattr(m, name)}
    shown = ", ".join(f"{RANGE[name]} {value}" for name, value in bounds.items())
    return info.annotation | None, Field(None, description=f"{key}: {info.description}" + (f" ({shown})" if shown else ""),
                                         **bounds)


_Settings = create_model("_Settings", __config__=ConfigDict(extra="forbid"),
                         **{name: setting(key) for name, key in KEYS.items()})


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
