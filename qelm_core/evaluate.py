"""Perplexity, accuracy and the baselines every student number is printed beside.

All models are scored on the same targets: the test split's student ids (OTHER included), each
predicted from what came before it. Perplexity = exp(mean negative log-likelihood).
"""
from __future__ import annotations

import math

import numpy as np

from qelm_core.data import unigram_probs


def perplexity(target_probs: np.ndarray) -> float:
    """exp(-mean ln p(target)); a zero probability gives inf (callers smooth first, and say so)."""
    p = np.asarray(target_probs, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return float(math.exp(-np.log(p).mean()))


def target_probs(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(N, V) distributions, (N,) targets -> (N,) probability of each target."""
    return np.asarray(probs)[np.arange(len(targets)), targets].astype(np.float64)


def ppl_uniform(size: int) -> float:
    return float(size)


def ppl_unigram(train_ids: np.ndarray, test_targets: np.ndarray, size: int) -> float:
    return perplexity(unigram_probs(train_ids, size)[test_targets])


def bigram_table(train_ids: np.ndarray, size: int, k: float) -> np.ndarray:
    """(V, V) add-k bigram p(next | prev) from train counts; row = previous id."""
    counts = np.zeros((size, size), dtype=np.float64)
    np.add.at(counts, (train_ids[:-1], train_ids[1:]), 1.0)
    counts += k
    return counts / counts.sum(1, keepdims=True)


def tune_bigram_k(train_ids: np.ndarray, val_ids: np.ndarray, size: int,
                  grid=(0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)) -> float:
    """The add-k smoothing with the lowest validation perplexity."""
    scores = {k: perplexity(bigram_table(train_ids, size, k)[val_ids[:-1], val_ids[1:]]) for k in grid}
    return min(scores, key=scores.get)


def topk_accuracy(probs: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Fraction of targets among the k most probable entries (ties broken by lower id, stably)."""
    top = np.argsort(-np.asarray(probs), axis=1, kind="stable")[:, :k]
    return float((top == np.asarray(targets)[:, None]).any(1).mean())


def smooth(probs: np.ndarray, eps: float) -> np.ndarray:
    """Mix with uniform: (1 - eps) p + eps / V -- so a sampled zero costs ln(V / eps) nats, not inf."""
    return (1 - eps) * np.asarray(probs, dtype=np.float64) + eps / probs.shape[1]


def gap_recovered(ppl_unigram_: float, ppl_student: float, ppl_teacher: float) -> float:
    """Share of the unigram -> teacher gap (in nats) the student closes: 0 = unigram, 1 = teacher."""
    return (math.log(ppl_unigram_) - math.log(ppl_student)) / (math.log(ppl_unigram_) - math.log(ppl_teacher))


def model_scores(probs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    return {"ppl": perplexity(target_probs(probs, targets)), "top1": topk_accuracy(probs, targets, 1),
            "top5": topk_accuracy(probs, targets, 5)}


def model_probs(model, contexts, batch: int = 2048) -> np.ndarray:
    """(N, k) contexts -> (N, V) probabilities from a student's forward pass (exact simulator)."""
    import torch

    with torch.no_grad():
        return np.concatenate([model(contexts[i: i + batch]).exp().double().numpy()
                               for i in range(0, len(contexts), batch)])


def noisy_subset(model, contexts, targets, positions: int, device_params, shots: int, eps: float, seed: int):
    """Evaluate the same weights on sampled, noisy hardware (a fake IBM backend) on `positions` test
    positions drawn with `seed`; returns (smoothed noisy probs, exact probs, targets, zero-prob count)."""
    import torch

    from qelm_core.student import predict_probs

    pick = torch.from_numpy(np.random.default_rng(seed).choice(len(targets), size=positions, replace=False))
    noisy = predict_probs(model, contexts[pick], device_params, shots=shots, seed=seed).numpy()
    exact = model_probs(model, contexts[pick])
    tgt = np.asarray(targets)[pick.numpy()]
    zeros = int((target_probs(noisy, tgt) == 0).sum())
    return smooth(noisy, eps), exact, tgt, zeros


def seed_stats(name: str, per_seed: list[dict[str, float]], ppl_unigram_: float, ppl_teacher: float) -> dict:
    """Mean and sd over seeds of a trained model's scores and gap recovered: ppl_<name>, ppl_<name>_sd, ..."""
    import statistics

    def sd(values):
        return statistics.stdev(values) if len(values) > 1 else 0.0

    out = {f"seeds_{name}": len(per_seed)}
    for key in ("ppl", "top1", "top5"):
        values = [s[key] for s in per_seed]
        out.update({f"{key}_{name}": statistics.fmean(values), f"{key}_{name}_sd": sd(values)})
    gaps = [gap_recovered(ppl_unigram_, s["ppl"], ppl_teacher) for s in per_seed]
    suffix = "" if name == "quantum" else f"_{name}"
    out.update({f"gap_recovered{suffix}": statistics.fmean(gaps), f"gap_recovered{suffix}_sd": sd(gaps)})
    return out
