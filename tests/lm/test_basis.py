"""Vocabulary -> basis-state assignment: each method is a permutation; `meaning` groups tokens by context."""
import numpy as np
import pytest
import torch

from qelm_core.lm.basis import (assign_basis, balanced_bisection, hamming_order, left_context_vectors, load_basis,
                             prefix_agreement, save_basis)
from qelm_core.config import QelmError, StudentParams
from qelm_core.lm.student import QuantumStudent, load_student, save_student


def test_hamming_order():
    order = hamming_order(4).tolist()
    assert sorted(order) == list(range(16)) and order[0] == 0
    weights = [bin(b).count("1") for b in order]
    assert weights == sorted(weights)
    assert order[1:5] == [1, 2, 4, 8]  # weight-1 states, ties by integer value


def two_families(n_tokens=8, length=4000, seed=0):
    """A stream where tokens 0..3 only ever follow token 0 or 1 and tokens 4..7 only follow 6 or 7."""
    rng = np.random.default_rng(seed)
    ids = [0]
    for _ in range(length):
        prev = ids[-1]
        ids.append(int(rng.integers(0, 4)) if prev in (0, 1) or prev in (2, 3) and rng.random() < 0.5
                   else int(rng.integers(4, 8)))
    ids = np.array(ids)
    # make the previous tokens of each family distinct: family A follows {0, 1}, family B follows {6, 7}
    out = [0]
    for t in ids[1:]:
        out += [int(rng.integers(0, 2)) if t < 4 else int(rng.integers(6, 8)), int(t)]
    return np.array(out)


@pytest.mark.parametrize("method", ["hamming", "random", "meaning"])
def test_every_method_is_a_permutation_and_deterministic(method):
    ids = two_families()
    a = assign_basis(method, ids, 3, seed=1)
    assert sorted(a.tolist()) == list(range(8)) and a.dtype == np.int64
    assert np.array_equal(a, assign_basis(method, ids, 3, seed=1))


def test_random_depends_on_the_seed():
    ids = two_families()
    assert not np.array_equal(assign_basis("random", ids, 4, 0), assign_basis("random", ids, 4, 1))


def test_meaning_puts_each_context_family_under_one_first_bit():
    ids = two_families()
    basis = assign_basis("meaning", ids, 3, seed=0)
    first_bit = basis >> 2
    assert len(set(first_bit[:4])) == 1 and len(set(first_bit[4:])) == 1 and first_bit[0] != first_bit[4]
    vectors = left_context_vectors(ids, 8)
    assert prefix_agreement(basis, vectors, 3, 1) > 0.3
    assert prefix_agreement(basis, vectors, 3, 1) > prefix_agreement(hamming_order(3), vectors, 3, 1)


def test_bisection_puts_the_heavier_half_on_bit_zero():
    vectors = np.array([[0.0], [0.1], [1.0], [1.1]], dtype=np.float32)
    codes = balanced_bisection(vectors, np.array([1.0, 1.0, 50.0, 50.0]), 2)
    assert set((codes[2:] >> 1).tolist()) == {0} and set((codes[:2] >> 1).tolist()) == {1}


def test_save_load_round_trip_and_wrong_vocabulary(tmp_path):
    basis = assign_basis("random", two_families(), 3, 0)
    save_basis(tmp_path / "basis.json", basis, "random", 3, "hash1", {"prefix_agreement_1bit": 0.0})
    assert np.array_equal(load_basis(tmp_path / "basis.json", 3, "hash1"), basis)
    with pytest.raises(QelmError, match="another vocabulary"):
        load_basis(tmp_path / "basis.json", 3, "other-hash")
    with pytest.raises(QelmError, match="no basis assignment"):
        load_basis(tmp_path / "missing.json", 3, "hash1")


@pytest.mark.parametrize("encoding", ["embedding", "bits"])
def test_student_reads_out_through_its_basis_and_keeps_it_on_disk(tmp_path, encoding):
    sp = StudentParams(n_qubits=3, context=2, layers=1, encoding=encoding, log_bias=False)
    basis = torch.tensor([5, 0, 7, 1, 2, 6, 3, 4])
    ctx = torch.tensor([[1, 2], [3, 7]])
    plain = QuantumStudent(sp, generator=torch.Generator().manual_seed(0))
    mapped = QuantumStudent(sp, generator=torch.Generator().manual_seed(0), basis=basis)
    if encoding == "embedding":  # same circuit, outputs permuted by the map
        torch.testing.assert_close(mapped.circuit_probs(ctx).double(), plain._qnode(
            plain.angles(ctx).double(), plain.circuit_weights)[..., basis].double())
    save_student(mapped, tmp_path / "m")
    loaded, _ = load_student(tmp_path / "m")
    assert torch.equal(loaded.basis, basis)
    torch.testing.assert_close(loaded(ctx), mapped(ctx))
    with pytest.raises(QelmError, match="permutation"):
        QuantumStudent(sp, basis=torch.tensor([0, 0, 1, 2, 3, 4, 5, 6]))
