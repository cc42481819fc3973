"""Distillation of a classifier student: the same loop, loss, data and budget for every student kind.

loss = (1 - alpha) * CE(student, label) + alpha * T^2 * KL(softmax(teacher_logits / T) || softmax(student / T))
(qelm_core.distill.kd_loss, fed the student's log-probs and the teacher's probabilities). Adam, minibatches
in an order drawn from (seed, epoch); after each epoch the validation accuracy is measured and the
best epoch's weights are kept (ties: the lower validation CE).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from qelm_core.distill import kd_loss


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


def fit(model, train: SplitTensors, val: SplitTensors, tp, seed: int, on_epoch=None) -> FitResult:
    """Train `model` in place with TrainParams `tp`; on return it holds its best-validation weights."""
    optimizer = torch.optim.Adam(model.parameters(), lr=tp.lr)
    teacher_p = torch.softmax(train.teacher_logits, dim=-1)  # (N, C); kd_loss applies T itself
    best = {"acc": -1.0, "ce": float("inf"), "epoch": 0, "state": None}
    history, stale, start = [], 0, time.perf_counter()
    for epoch in range(1, tp.epochs + 1):
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
        history.append(row)
        if on_epoch:
            on_epoch(row)
        if acc > best["acc"] or (acc == best["acc"] and ce < best["ce"]):
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best, stale = {"acc": acc, "ce": ce, "epoch": epoch, "state": state}, 0
        else:
            stale += 1
            if tp.patience and stale >= tp.patience:
                break
    model.load_state_dict(best["state"])
    model.eval()
    return FitResult(time.perf_counter() - start, len(history), best["epoch"], best["acc"], history)


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
