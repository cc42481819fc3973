"""The teacher classifier: a linear head (multinomial logistic regression) on the LLM's mean-pooled
hidden states, trained on the train split; its logits on every split are the distillation targets
(soft labels = softmax(logits / T), T = train.temperature, applied in the loss).

Fit: features standardised with train mean/std, full-batch L-BFGS on CE + l2 * ||W||^2 (bias not
penalised), float64, deterministic (no sampling). l2 is picked from `l2_grid` by validation accuracy
(ties: the larger l2, i.e. the simpler model).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class LinearHead:
    mean: np.ndarray  # (d,)
    std: np.ndarray  # (d,)
    weight: np.ndarray  # (C, d)
    bias: np.ndarray  # (C,)
    l2: float

    def logits(self, x: np.ndarray) -> np.ndarray:
        """(N, d) -> (N, C) float32."""
        z = (np.asarray(x, np.float64) - self.mean) / self.std
        return (z @ self.weight.T + self.bias).astype(np.float32)

    @property
    def n_params(self) -> int:
        return int(self.weight.size + self.bias.size)


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Train mean and std per feature (std floored so constant features stay finite)."""
    x = np.asarray(x, np.float64)
    return x.mean(0), np.maximum(x.std(0), 1e-6)


def fit_linear(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float, max_iter: int,
               mean: np.ndarray | None = None, std: np.ndarray | None = None) -> LinearHead:
    """Multinomial logistic regression by full-batch L-BFGS. x (N, d), y (N,) -> LinearHead."""
    if mean is None or std is None:
        mean, std = standardiser(x)
    z = torch.from_numpy((np.asarray(x, np.float64) - mean) / std)  # (N, d)
    t = torch.from_numpy(np.asarray(y, np.int64))
    w = torch.zeros(n_classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, t) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return LinearHead(mean, std, w.detach().numpy(), b.detach().numpy(), l2)


def fit_teacher_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                     n_classes: int, l2_grid: list[float], max_iter: int) -> tuple[LinearHead, dict[str, float]]:
    """The head with the best validation accuracy over `l2_grid` -> (head, {l2: val accuracy})."""
    mean, std = standardiser(x_train)
    scores, heads = {}, {}
    for l2 in sorted(l2_grid, reverse=True):  # larger l2 first: it wins ties
        head = fit_linear(x_train, y_train, n_classes, l2, max_iter, mean, std)
        scores[l2] = float((head.logits(x_val).argmax(1) == y_val).mean())
        heads[l2] = head
    best = max(scores, key=lambda k: (scores[k], k))
    return heads[best], scores
