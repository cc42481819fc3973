import math

import numpy as np
import pytest

from qelm_core.evaluate import (bigram_table, gap_recovered, perplexity, ppl_unigram, smooth, target_probs,
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
