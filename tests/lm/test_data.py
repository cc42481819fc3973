import numpy as np
import pytest
import torch

from qelm_core.config import DataParams, Paths, parse_params
from qelm_core.lm.data import OTHER_ID, Vocab, build_vocab, contexts, project_probs, split_stream, unigram_probs
from qelm_core.validation import DataValidationError


def test_projection_rows_sum_to_one_and_other_collects_excluded_mass():
    gen = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(7, 50, generator=gen), dim=1)
    keep = torch.tensor([3, 10, 11, 40])
    out = project_probs(probs, keep)
    assert out.shape == (7, 5)
    assert torch.allclose(out.sum(1), torch.ones(7, dtype=torch.float64), atol=1e-12)
    excluded = [i for i in range(50) if i not in keep.tolist()]
    assert torch.allclose(out[:, 0], probs[:, excluded].double().sum(1), atol=1e-7)
    assert torch.equal(out[:, 1:].float(), probs[:, keep])


def test_vocab_is_top_tokens_with_other_at_zero_and_maps_back():
    train = np.array([5, 5, 5, 7, 7, 9, 2, 2, 2, 2, 11])
    vocab = build_vocab(train, 4, lambda ids: [f"t{i}" for i in ids])
    assert vocab.llm_ids == [-1, 2, 5, 7]  # by count, OTHER first
    assert vocab.counts == [2, 4, 3, 2]  # 9 and 11 fall into OTHER
    ids = vocab.to_student(np.array([2, 9, 7, 5, 11, 1000]))
    assert ids.tolist() == [1, OTHER_ID, 3, 2, OTHER_ID, OTHER_ID]
    assert Vocab.from_json(vocab.to_json()).llm_ids == vocab.llm_ids


def test_vocab_too_small_corpus_is_a_clear_error():
    with pytest.raises(Exception, match="too small.*distinct tokens"):
        build_vocab(np.array([1, 2, 3]), 16, lambda ids: ids)


def test_splits_are_contiguous_and_disjoint():
    ids = np.arange(1000)
    parts = split_stream(ids, DataParams(split_train=0.7, split_val=0.1))
    assert [len(parts[s]) for s in ("train", "val", "test")] == [700, 100, 200]
    assert np.array_equal(np.concatenate([parts["train"], parts["val"], parts["test"]]), ids)
    assert not set(parts["train"]) & set(parts["test"])


def test_contexts_are_previous_tokens_left_padded():
    ctx = contexts(np.array([4, 5, 6, 7]), 2)
    assert ctx.tolist() == [[OTHER_ID, 4], [4, 5], [5, 6]]  # targets 5, 6, 7


def test_unigram_is_add_one():
    p = unigram_probs(np.array([0, 0, 1]), 3)
    assert np.allclose(p, [3 / 6, 2 / 6, 1 / 6])


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "binary file"),
    ("caf\u00e9 na\u00efve r\u00e9sum\u00e9 ".encode("latin-1") * 50, "not UTF-8"),
])
def test_prepare_rejects_bad_corpus_and_writes_nothing(tmp_path, content, message):
    from qelm_core.lm.stages import prepare

    (tmp_path / "bad.txt").write_bytes(content)
    params = parse_params({"data": {"corpus": str(tmp_path / "bad.txt")}, "student": {"n_qubits": 3}})
    with pytest.raises(DataValidationError, match=message) as info:
        prepare.run(params, Paths(tmp_path))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "data").exists()


def test_prepare_roundtrips_ids_to_text(tmp_path):
    from qelm_core.lm.data import load_prepared
    from qelm_core.lm.stages import prepare
    from qelm_core.llm import load_tokenizer, resolve_teacher
    from tests.conftest import shakespeare_text

    (tmp_path / "c.txt").write_text(shakespeare_text(4000))
    params = parse_params({"data": {"corpus": str(tmp_path / "c.txt")}, "student": {"n_qubits": 5}})
    stats = prepare.run(params, Paths(tmp_path))
    vocab, llm, ids = load_prepared(tmp_path / "data" / "prepared")
    assert vocab.size == 32 and stats["vocab_size"] == 32
    tok = load_tokenizer(resolve_teacher("smollm2"))
    # every split's llm ids decode back to a piece of the original text, and in-vocab ids map back to them
    text = "".join(tok.decode(llm[s]) for s in ("train", "val", "test"))
    assert text.strip()[:200] == shakespeare_text(4000).strip()[:200]
    inside = ids["train"] != OTHER_ID
    assert np.array_equal(np.array(vocab.llm_ids)[ids["train"][inside]], llm["train"][inside])
    assert (tmp_path / "data" / "raw" / "manifest.json").is_file()


def test_gx_prepared_suite_rejects_out_of_range_ids_and_wrong_fractions():
    from qelm_core.validation import validate_prepared

    good = {"train": np.arange(70) % 8, "val": np.arange(10) % 8, "test": np.arange(20) % 8}
    fractions = {"train": 0.7, "val": 0.1, "test": 0.2}
    validate_prepared(good, 8, fractions, 3)
    with pytest.raises(DataValidationError, match="out of range"):
        validate_prepared({**good, "val": np.full(10, 9)}, 8, fractions, 3)
    with pytest.raises(DataValidationError, match="split train is not 0.50"):
        validate_prepared(good, 8, {"train": 0.5, "val": 0.3, "test": 0.2}, 3)
    with pytest.raises(DataValidationError, match="fewer than 15 tokens"):
        validate_prepared(good, 8, fractions, 15)
