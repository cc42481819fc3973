"""Distillation of a classifier student: the same loop, loss, data and budget for every student kind.

loss = (1 - alpha) * CE(student, label) + alpha * T^2 * KL(softmax(teacher_logits / T) || softmax(student / T))
(qelm_core.lm.distill.kd_loss, fed the student's log-probs and the teacher's probabilities). Adam, minibatches
in an order drawn from (seed, epoch); after each epoch the validation accuracy is measured and the
best epoch's weights are kept (ties: the lower validation CE). With a checkpoint path, every epoch ends
in a checkpoint (the LM loop's format, qelm_core/lm/distill.py: model + Adam state + loop state, safetensors)
and a rerun with the same key resumes after the last finished epoch, ending with the same weights.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from qelm_core.lm.distill import checkpoint_state, kd_loss, load_checkpoint, save_checkpoint


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

    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode() + code_digest(sys.modules[__name__], models).encode())
    for split in splits:
        for t in (split.x, split.y, split.teacher_logits):
            h.update(t.numpy().tobytes())
    return h.hexdigest()[:16]


def fit(model, train: SplitTensors, val: SplitTensors, tp, seed: int, on_epoch=None,
        checkpoint: Path | None = None, key: str = "") -> FitResult:
    """Train `model` in place with TrainParams `tp`; on return it holds its best-validation weights.
    `checkpoint` (+ `key`, fit_key): resume from it and write it after every epoch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=tp.lr)
    teacher_p = torch.softmax(train.teacher_logits, dim=-1)  # (N, C); kd_loss applies T itself
    state = {"key": key, "epoch": 0, "history": [], "best_acc": -1.0, "best_ce": math.inf, "best_epoch": 0,
             "stale": 0, "seconds": 0.0}
    best_path = checkpoint.with_name(checkpoint.stem + ".best.safetensors") if checkpoint else None
    best = None  # the best epoch's weights (in memory; on disk too with a checkpoint)
    if checkpoint and checkpoint.is_file() and best_path.is_file() and checkpoint_state(checkpoint).get("key") == key:
        state = load_checkpoint(checkpoint, model, optimizer)
    start = time.perf_counter() - state["seconds"]
    while state["epoch"] < tp.epochs and not (tp.patience and state["stale"] >= tp.patience):
        epoch = state["epoch"] + 1
        model.train()
        order, total = epoch_order(seed, epoch, len(train.y)), 0.0
        for i in range(0, len(order), tp.batch_size):
            idx = order[i: i + tp.batch_size]
            logp = F.log_softmax(model(train.x[idx]), dim=-1)  # (b, C)
            loss = kd_loss(logp, teacher_p[idx], train.y[idx], tp.alpha, tp.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        logits = predict_logits(model, val.x)
        acc = float((logits.argmax(1) == val.y).float().mean())
        ce = float(F.cross_entropy(logits, val.y))
        row = {"epoch": epoch, "train_loss": total / len(order), "val_accuracy": acc, "val_ce": ce}
        state["history"].append(row)
        if on_epoch:
            on_epoch(row)
        if acc > state["best_acc"] or (acc == state["best_acc"] and ce < state["best_ce"]):
            state.update(best_acc=acc, best_ce=ce, best_epoch=epoch, stale=0)
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if checkpoint:
                save_checkpoint(best_path, model, optimizer, {"epoch": epoch})
        else:
            state["stale"] += 1
        state.update(epoch=epoch, seconds=time.perf_counter() - start)
        if checkpoint:
            save_checkpoint(checkpoint, model, optimizer, state)
    if best is not None:
        model.load_state_dict(best)
    elif checkpoint:  # resumed after the best epoch: its weights are on disk
        load_checkpoint(best_path, model, torch.optim.Adam(model.parameters(), lr=tp.lr))
    model.eval()
    return FitResult(time.perf_counter() - start, len(state["history"]), state["best_epoch"], state["best_acc"],
                     state["history"])


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
