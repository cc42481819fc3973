"""Vocabulary -> basis-state assignment: which n-bit basis state reads out which student id.

A Born machine has no per-token output parameters: token i's probability is |<b_i|psi>|^2 for its
basis state b_i, so the code b is part of the model. It is computed from train data only, before
training, and has no parameters (`qelm assign`, data/basis/basis.json, versioned by DVC; the
student carries it in its safetensors file, so training, evaluation, the noisy run, the served model
and `qelm predict` all read the same map).

Methods (`student.assignment`):
  hamming   ids by frequency onto states by (Hamming weight, value): id 0 -> |0..0>, then weight 1, ...
  random    a permutation drawn from `seed`
  meaning   recursive balanced bisection of the vocabulary on bigram left-context vectors: the top
            principal direction of the tokens' sqrt P(previous token | token) splits the set into
            two equal halves (bit of wire 0), each half again (wire 1), ... so tokens that share a
            bit prefix follow similar contexts, and a circuit that steers a few wires steers the
            distribution over a whole family of tokens. The half with more train mass gets bit 0.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from qelm_core.config import QelmError
from qelm_core.io import atomic_write_json

ASSIGNMENTS = ("hamming", "random", "meaning")
FORMAT = "qelm-basis/1"


def hamming_order(n_qubits: int) -> np.ndarray:
    """(V,) vocab id -> basis state, by increasing Hamming weight, ties by value."""
    return np.array(sorted(range(2**n_qubits), key=lambda b: (bin(b).count("1"), b)), dtype=np.int64)


def left_context_vectors(train_ids: np.ndarray, size: int, smoothing: float = 0.1) -> np.ndarray:
    """(V, V) float32: row w = sqrt of the add-`smoothing` distribution of the token before w."""
    counts = np.zeros((size, size), dtype=np.float64)  # [next, previous]
    np.add.at(counts, (train_ids[1:], train_ids[:-1]), 1.0)
    counts += smoothing
    return np.sqrt(counts / counts.sum(1, keepdims=True)).astype(np.float32)


def _top_direction(x: np.ndarray, iters: int = 50) -> np.ndarray:
    """Leading right singular vector of the centred rows of x (deterministic power iteration)."""
    x = x - x.mean(0, keepdims=True)
    v = np.abs(x).sum(0) + 1e-6  # a fixed, data-derived start
    v /= np.linalg.norm(v)
    for _ in range(iters):
        v = x.T @ (x @ v)
        norm = np.linalg.norm(v)
        if norm == 0:  # all rows equal: any direction splits them (ties go by id)
            return np.zeros(len(x), dtype=x.dtype)
        v /= norm
    return x @ v


def balanced_bisection(vectors: np.ndarray, mass: np.ndarray, n_qubits: int) -> np.ndarray:
    """(V, D) vectors, (V,) train counts -> (V,) basis states; V = 2^n, each state used once."""
    size = len(vectors)
    if size != 2**n_qubits:
        raise ValueError(f"need 2^{n_qubits} vectors, got {size}")
    codes = np.zeros(size, dtype=np.int64)
    groups = [np.arange(size)]
    for wire in range(n_qubits):  # wire 0 = most significant bit
        bit, split = 1 << (n_qubits - 1 - wire), []
        for members in groups:
            proj = _top_direction(vectors[members])
            order = members[np.lexsort((members, proj))]  # by projection, ties by id: deterministic
            low, high = order[: len(order) // 2], order[len(order) // 2:]
            if mass[high].sum() > mass[low].sum():  # the heavier half sits on bit 0 (near |0..0> at init)
                low, high = high, low
            codes[high] |= bit
            split += [np.sort(low), np.sort(high)]
        groups = split
    return codes


def assign_basis(method: str, train_ids: np.ndarray, n_qubits: int, seed: int) -> np.ndarray:
    """(V,) int64: basis state of each student id, a permutation of 0..2^n - 1."""
    size = 2**n_qubits
    if method == "hamming":
        return hamming_order(n_qubits)
    if method == "random":
        return np.random.default_rng(seed).permutation(size).astype(np.int64)
    if method == "meaning":
        mass = np.bincount(train_ids, minlength=size).astype(np.float64)
        return balanced_bisection(left_context_vectors(train_ids, size), mass, n_qubits)
    raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {method!r}")


def prefix_agreement(basis: np.ndarray, vectors: np.ndarray, n_qubits: int, bits: int = 1) -> float:
    """Mean cosine similarity of the context vectors of token pairs that share the first `bits` bits,
    minus that of all pairs: > 0 when the code groups tokens with similar contexts (a diagnostic)."""
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sim = unit @ unit.T
    prefix = basis >> (n_qubits - bits)
    same = prefix[:, None] == prefix[None, :]
    np.fill_diagonal(same, False)
    return float(sim[same].mean() - sim[~np.eye(len(basis), dtype=bool)].mean())


def save_basis(path: Path, basis: np.ndarray, method: str, n_qubits: int, vocab_hash: str, stats: dict) -> None:
    atomic_write_json(path, {"format": FORMAT, "method": method, "n_qubits": n_qubits, "vocab_hash": vocab_hash,
                             **stats, "basis": [int(b) for b in basis]})


def load_basis(path: Path, n_qubits: int, vocab_hash: str) -> np.ndarray:
    """The saved map, checked against the vocabulary it was computed for."""
    fix = "run `qelm assign` (or dvc repro) first"
    if not Path(path).is_file():
        raise QelmError(f"{path}: no basis assignment; {fix}")
    obj = json.loads(Path(path).read_text())
    if obj.get("format") != FORMAT or obj.get("n_qubits") != n_qubits or obj.get("vocab_hash") != vocab_hash:
        raise QelmError(f"{path}: computed for another vocabulary (n_qubits={obj.get('n_qubits')}); {fix}")
    basis = np.asarray(obj["basis"], dtype=np.int64)
    if sorted(basis.tolist()) != list(range(2**n_qubits)):
        raise QelmError(f"{path}: not a permutation of the 2^{n_qubits} basis states; {fix}")
    return basis
