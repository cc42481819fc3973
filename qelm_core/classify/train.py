"""Distillation of a classifier student: the same loop, loss, data and budget for every student kind.

loss = (1 - alpha) * CE(student, label) + alpha * T^2 * KL(softmax(teacher_logits / T) || softmax(student / T))
The loop is the LM's (qelm_core/training.py: Adam, KD loss, checkpoints that resume exactly), walked in
epochs: an epoch is ceil(N / batch_size) steps over minibatches in an order drawn from (seed, epoch), and
ends in an evaluation (the validation accuracy; ties: the lower validation CE) and, with a checkpoint path,
a checkpoint. The best epoch's weights are kept; a rerun with the same key resumes after the last finished
epoch and ends with the same weights.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qelm_core import training


@dataclass
class SplitTensors:
    x: torch.Tensor  # (N, d) float32 features
    y: torch.Tensor  # (N,) int64 labels
    teacher_logits: torch.Tensor  # (N, C) float32

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray, teacher_logits: np.ndarray) -> "SplitTensors":
        return cls(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.long),
                   torch.as_tensor(teacher_logits, dtype=torch.float32))


@dataclass
class FitResult:
    seconds: float
    epochs: int
    best_epoch: int
    best_val_accuracy: float
    history: list[dict] = field(default_factory=list)


@torch.no_grad()
def predict_logits(model, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    """(N, d) -> (N, C) logits, in batches (the fused circuit holds a (batch, 2^n) state)."""
    model.eval()
    return torch.cat([model(x[i: i + batch]) for i in range(0, len(x), batch)]) if len(x) else torch.zeros(0)


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def fit_key(config: dict, *splits: SplitTensors) -> str:
    """A checkpoint is only resumed by the fit it belongs to: same settings, same data, same code."""
    from qelm_core.classify import models
    from qelm_core.io import code_digest

    code = code_digest(sys.modules[__name__], training, models)
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode() + code.encode())
    for split in splits:
        for t in (split.x, split.y, split.teacher_logits):
            h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def fit(model, train: SplitTensors, val: SplitTensors, tp, seed: int, on_epoch=None,
        checkpoint: Path | None = None, key: str = "") -> FitResult:
    """Train `model` in place with TrainParams `tp`; on return it holds its best-validation weights.
    `checkpoint` (+ `key`, fit_key): resume from it and write it after every epoch."""
    n = len(train.y)
    per_epoch = math.ceil(n / tp.batch_size)  # steps
    teacher_p = torch.softmax(train.teacher_logits, dim=-1)  # (N, C); kd_loss applies T itself
    order = functools.lru_cache(maxsize=1)(lambda epoch: epoch_order(seed, epoch, n))  # drawn once per epoch

    def batch_at(step: int) -> tuple:
        epoch, i = divmod(step - 1, per_epoch)
        idx = order(epoch + 1)[i * tp.batch_size: (i + 1) * tp.batch_size]  # (b,), the last one may be short
        return train.x[idx], teacher_p[idx], train.y[idx]

    def validate(model) -> tuple[tuple, dict]:
        logits = predict_logits(model, val.x)
        acc = float((logits.argmax(1) == val.y).float().mean())
        ce = float(F.cross_entropy(logits, val.y))
        return (-acc, ce), {"val_accuracy": acc, "val_ce": ce}  # higher accuracy first, then lower CE

    def epoch_row(row: dict) -> dict:
        return {"epoch": row["step"] // per_epoch, **{k: v for k, v in row.items() if k != "step"}}

    r = training.fit(model, batch_at, validate, steps=tp.epochs * per_epoch, eval_every=per_epoch,
                     checkpoint_every=per_epoch, lr=tp.lr, alpha=tp.alpha, temperature=tp.temperature,
                     patience=tp.patience, logits=True, train_loss="mean", checkpoint=checkpoint, key=key,
                     on_eval=(lambda row: on_epoch(epoch_row(row))) if on_epoch else None)
    model.eval()
    history = [epoch_row(row) for row in r.history]
    return FitResult(r.seconds, len(history), r.best_step // per_epoch, -r.best_score[0], history)


def student_inputs(params, paths, name: str):
    """-> (Prepared, {split: SplitTensors}): the students' features (student.features) and the teacher's
    logits for every split of dataset `name`."""
    from safetensors.numpy import load_file

    from qelm_core.classify.data import SPLITS, load_prepared

    prep = load_prepared(paths.prepared, name)
    feats = load_file(str(paths.features / f"{name}.safetensors"))
    teacher = load_file(str(paths.teacher / f"{name}.safetensors"))
    kind = params.student.features
    return prep, {s: SplitTensors.of(feats[f"{kind}.{s}"], prep.y[s], teacher[f"logits.{s}"]) for s in SPLITS}
