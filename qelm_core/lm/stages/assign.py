"""Stage assign: the vocabulary -> basis-state map the quantum student reads out through (train data only)."""
from __future__ import annotations

from qelm_core.lm.basis import assign_basis, left_context_vectors, prefix_agreement, save_basis
from qelm_core.config import Params, Paths
from qelm_core.lm.data import load_prepared


def run(params: Params, paths: Paths) -> dict:
    vocab, _, ids = load_prepared(paths.prepared)
    n, method = params.student.n_qubits, params.student.assignment
    basis = assign_basis(method, ids["train"], n, params.seed)
    vectors = left_context_vectors(ids["train"], vocab.size)
    stats = {"prefix_agreement_1bit": prefix_agreement(basis, vectors, n, 1),
             "prefix_agreement_2bit": prefix_agreement(basis, vectors, n, min(2, n))}
    save_basis(paths.basis / "basis.json", basis, method, n, vocab.digest(), stats)
    return {"method": method, **stats}
