"""Perplexity, accuracy and the baselines every student number is printed beside.

All models are scored on the same targets: the test split's student ids (OTHER included), each
predicted from what came before it. Perplexity = exp(mean negative log-likelihood).

Two perplexities per model. `ppl_<model>`: over the V = 2^n student vocabulary, OTHER one entry (what
the student is trained on; comparable only between models with the same V). `ppl_full_<model>`: of the
actual next token in the teacher tokenizer's FULL vocabulary, comparable across V and with the teacher's
own perplexity. A V-entry model becomes a full-vocabulary one as a class-based LM (`FullVocab`): its
OTHER probability is shared among the out-of-vocabulary tokens in proportion to a fixed add-k unigram
over them, counted on the train split (k chosen on the validation split, the same for every model).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from qelm_core.lm.data import unigram_probs


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


class FullVocab:
    """p_full(t) = p(id(t)) for a token in the student vocabulary, p(OTHER) * q(t) for any other token t of
    the tokenizer's vocabulary; q = add-k unigram over those tokens from the train split (sums to 1)."""

    def __init__(self, vocab_llm_ids, train_llm_ids: np.ndarray, size: int, k: float):
        counts = np.bincount(train_llm_ids, minlength=size).astype(np.float64)[:size] + k
        counts[np.asarray(vocab_llm_ids)] = 0.0  # in-vocabulary tokens have their own entry
        self.within_other, self.size, self.k = counts / counts.sum(), size, k

    @classmethod
    def tuned(cls, vocab_llm_ids, train_llm_ids: np.ndarray, val_llm_targets: np.ndarray, size: int,
              grid=(0.001, 0.01, 0.1, 1.0)) -> "FullVocab":
        """k with the highest validation likelihood of the out-of-vocabulary tokens under q."""
        oov_targets = val_llm_targets[~np.isin(val_llm_targets, np.asarray(vocab_llm_ids))]
        fits = [cls(vocab_llm_ids, train_llm_ids, size, k) for k in grid]
        return min(fits, key=lambda f: perplexity(f.within_other[oov_targets]) if len(oov_targets) else f.k)

    def target_probs(self, probs: np.ndarray, targets: np.ndarray, llm_targets: np.ndarray) -> np.ndarray:
        """(N, V) student distributions, (N,) student targets, (N,) tokenizer ids -> (N,) p_full(target)."""
        p = target_probs(probs, targets)
        return np.where(np.asarray(targets) == 0, p * self.within_other[llm_targets], p)  # 0: OTHER_ID


def load_full_vocab(prepared: Path, teacher: Path, vocab) -> tuple[FullVocab, dict[str, np.ndarray], np.ndarray]:
    """-> (FullVocab fitted on train, k on val; the val and test targets as tokenizer ids, per split; the
    teacher's own full-vocabulary probability of each test target)."""
    import json

    from safetensors.numpy import load_file

    from qelm_core.lm.data import load_prepared

    _, llm, _ = load_prepared(prepared)
    size = json.loads((prepared / "stats.json").read_text())["tokenizer_vocab_size"]
    full = FullVocab.tuned(vocab.llm_ids[1:], llm["train"], llm["val"][1:], size)
    targets = {split: llm[split][1:] for split in ("val", "test")}
    return full, targets, load_file(str(teacher / "test.safetensors"))["target_probs_full"].astype(np.float64)


def model_scores(probs: np.ndarray, targets: np.ndarray, full: tuple[FullVocab, np.ndarray] | None = None
                 ) -> dict[str, float]:
    """ppl, top1, top5 over the V entries; with `full` = (FullVocab, tokenizer-id targets) also ppl_full."""
    out = {"ppl": perplexity(target_probs(probs, targets)), "top1": topk_accuracy(probs, targets, 1),
           "top5": topk_accuracy(probs, targets, 5)}
    if full is not None:
        out["ppl_full"] = perplexity(full[0].target_probs(probs, targets, full[1]))
    return out


def model_probs(model, contexts, batch: int = 2048) -> np.ndarray:
    """(N, k) contexts -> (N, V) probabilities from a student's forward pass (exact simulator)."""
    import torch

    with torch.no_grad():
        return np.concatenate([model(contexts[i: i + batch]).exp().double().numpy()
                               for i in range(0, len(contexts), batch)])


def seed_stats(name: str, per_seed: list[dict[str, float]], ppl_unigram_: float, ppl_teacher: float,
               full_baselines: tuple[float, float] | None = None) -> dict:
    """Mean and sd over seeds of a trained model's scores and gap recovered: ppl_<name>, ppl_<name>_sd, ...;
    with `full_baselines` = (full-vocabulary unigram, teacher) perplexities also ppl_full_* and gap_recovered_full*."""
    import statistics

    def sd(values):
        return statistics.stdev(values) if len(values) > 1 else 0.0

    out = {f"seeds_{name}": len(per_seed)}
    for key in [k for k in ("ppl", "ppl_full", "ppl_full_val", "top1", "top5") if k in per_seed[0]]:
        values = [s[key] for s in per_seed]
        out.update({f"{key}_{name}": statistics.fmean(values), f"{key}_{name}_sd": sd(values)})
    gaps = {"": [gap_recovered(ppl_unigram_, s["ppl"], ppl_teacher) for s in per_seed]}
    if full_baselines:
        gaps["_full"] = [gap_recovered(full_baselines[0], s["ppl_full"], full_baselines[1]) for s in per_seed]
    for kind, values in gaps.items():
        out.update({f"gap_recovered{kind}_{name}": statistics.fmean(values), f"gap_recovered{kind}_{name}_sd": sd(values)})
    return out
