import math

import numpy as np
import pytest

from qelm_core.lm.evaluate import (bigram_table, gap_recovered, perplexity, ppl_unigram, smooth, target_probs,
                                topk_accuracy, tune_bigram_k)


def test_uniform_perplexity_is_exactly_v():
    V = 256
    probs = np.full((10, V), 1 / V)
    assert perplexity(target_probs(probs, np.arange(10))) == pytest.approx(V, rel=1e-12)


def test_unigram_on_toy_corpus_by_hand():
    train = np.array([0, 0, 0, 1])  # add-one counts: [4, 2, 1] / 7
    test = np.array([0, 1, 2])
    expected = math.exp(-(math.log(4 / 7) + math.log(2 / 7) + math.log(1 / 7)) / 3)
    assert ppl_unigram(train, test, 3) == pytest.approx(expected)


def test_bigram_add_k_by_hand():
    train = np.array([0, 1, 0, 1, 1])  # pairs: 0->1 twice, 1->0 once, 1->1 once
    table = bigram_table(train, 2, k=0.5)
    assert table[0].tolist() == pytest.approx([0.5 / 3, 2.5 / 3])
    assert table[1].tolist() == pytest.approx([1.5 / 3, 1.5 / 3])
    k = tune_bigram_k(train, np.array([0, 1, 0, 1]), 2)
    assert k in (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def test_topk_accuracy_and_gap():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    assert topk_accuracy(probs, np.array([1, 1]), 1) == 0.5
    assert topk_accuracy(probs, np.array([1, 1]), 2) == 1.0
    assert gap_recovered(30.0, 30.0, 5.0) == 0.0
    assert gap_recovered(30.0, 5.0, 5.0) == pytest.approx(1.0)


def test_smoothing_keeps_rows_normalised_and_zero_finite():
    p = smooth(np.array([[1.0, 0.0, 0.0, 0.0]]), 1e-3)
    assert p.sum() == pytest.approx(1.0)
    assert perplexity(target_probs(p, np.array([3]))) == pytest.approx(4 / 1e-3)


def test_full_vocabulary_distribution_sums_to_one_and_keeps_in_vocabulary_tokens():
    """The class-based lift of a V-entry distribution is a distribution over the whole tokenizer vocabulary:
    in-vocabulary tokens keep their probability, OTHER's is shared among the rest by the train unigram."""
    from qelm_core.lm.evaluate import FullVocab

    rng = np.random.default_rng(0)
    size, vocab_llm_ids = 50, np.array([7, 3, 11])  # student ids 1..3; 0 = OTHER
    train = rng.integers(0, size, 400)
    full = FullVocab.tuned(vocab_llm_ids, train, rng.integers(0, size, 100), size)
    probs = rng.dirichlet(np.ones(4), size=2)  # (2, V = 4)
    student_id = {t: 0 for t in range(size)} | {int(t): i + 1 for i, t in enumerate(vocab_llm_ids)}
    for row in range(2):
        every = np.arange(size)
        p_full = full.target_probs(np.repeat(probs[row:row + 1], size, 0), np.array([student_id[t] for t in every]), every)
        assert p_full.sum() == pytest.approx(1.0)
        assert p_full[7] == probs[row, 1] and p_full[11] == probs[row, 3]
    counts = np.bincount(train, minlength=size).astype(float) + full.k
    assert full.within_other[0] / full.within_other[1] == pytest.approx(counts[0] / counts[1])
