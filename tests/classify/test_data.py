"""Classification data: the dataset rules, stratified splits, GX rejection of bad files, config errors."""
import json

import numpy as np
import pytest
import yaml

from qelm_core.classify.config import ClassifyPaths, load_classify_params, parse_classify_params
from qelm_core.classify.data import (Table, dedupe, load_dataset, load_prepared, parse_vader, split_table,
                                     stratified_indices)
from qelm_core.classify.validation import validate_examples, validate_splits
from qelm_core.config import ConfigError
from qelm_core.validation import DataValidationError
from tests.conftest import REPO

SDIST = REPO / ".cache" / "sdist" / "vaderSentiment-3.3.2.tar.gz"


def test_vader_rule_drops_near_neutral_and_labels_by_sign():
    lines = ["1\t2.2\tGreat  film!", "2\t-0.6\tToo tepid", "3\t0.4\tmeh", "4\t-0.49\tfine I guess", "5\t0.5\tgood"]
    texts, labels, neutral = parse_vader(lines, 0.5)
    assert texts == ["Great film!", "Too tepid", "good"] and labels == ["positive", "negative", "positive"]
    assert neutral == 2


def test_duplicates_keep_first_unless_labels_conflict():
    t = Table(["a", "b", "a", "c", "c", "d"], ["x", "y", "x", "x", "y", "y"], ["x", "y"], "test", "")
    out = dedupe(t)
    assert out.texts == ["a", "b", "d"] and out.labels == ["x", "y", "y"]
    assert out.notes["dropped_duplicates"] == 1 and out.notes["dropped_conflicting_duplicates"] == 2


@pytest.mark.skipif(not SDIST.is_file(), reason="vaderSentiment sdist not fetched (make setup does it)")
def test_real_vader_movies():
    from qelm_core.classify.config import DatasetParams

    t = load_dataset(DatasetParams(source="vader_movies", path=str(SDIST.parent)))
    assert t.notes["rows_read"] == 10605 and t.notes["dropped_neutral"] == 533
    assert len(t.texts) == 10605 - 533 - t.notes["dropped_duplicates"] - t.notes["dropped_conflicting_duplicates"]
    assert set(t.labels) == {"negative", "positive"} and len(set(t.texts)) == len(t.texts)


def test_real_bbc_news():
    from qelm_core.classify.config import DatasetParams

    t = load_dataset(DatasetParams(source="bbc_news"))
    assert t.notes["rows_read"] == 2225 and t.label_set == ["business", "entertainment", "politics", "sports", "tech"]
    assert len(t.texts) == 2225 - t.notes["dropped_duplicates"] - t.notes["dropped_conflicting_duplicates"]
    assert all(t.texts)


def test_stratified_split_is_proportional_disjoint_and_deterministic():
    labels = np.array([0] * 100 + [1] * 40 + [2] * 20)
    parts = stratified_indices(labels, [0.7, 0.15], seed=3)
    assert sorted(np.concatenate(parts).tolist()) == list(range(160))
    for cls, n in ((0, 100), (1, 40), (2, 20)):
        counts = [int(np.sum(labels[p] == cls)) for p in parts]
        assert abs(counts[0] - 0.7 * n) <= 1 and abs(counts[1] - 0.15 * n) <= 1
    again = stratified_indices(labels, [0.7, 0.15], seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    t = Table([f"t{i}" for i in range(160)], [str(v) for v in labels], ["0", "1", "2"], "test", "")
    splits = split_table(t, 0.7, 0.15, seed=3)
    validate_splits("test", {s: d["label"] for s, d in splits.items()}, 3, {"train": 0.7, "val": 0.15, "test": 0.15})


def _csv(tmp_path, rows, name="data.csv"):
    path = tmp_path / name
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    return path


@pytest.mark.parametrize("rows,message", [
    (["good film,pos", "bad film,neg", "odd film,maybe"], "labels outside the label set"),
    (["good film,pos", "bad film,", "ok film,neg"], "rows without a label"),
    (["good film,pos", '"   ",neg', "ok film,neg"], "empty texts"),
])
def test_gx_rejects_a_bad_labels_file(tmp_path, rows, message):
    from qelm_core.classify.config import DatasetParams

    dp = DatasetParams(source="csv", path=str(_csv(tmp_path, rows)), labels=["neg", "pos"])
    t = load_dataset(dp)
    with pytest.raises(DataValidationError, match=message):
        validate_examples("mine", t.texts, t.labels, t.label_set)


def test_prepare_stage_on_a_user_jsonl_and_its_rejection(tmp_path):
    from qelm_core.classify.stages import prepare

    rows = [{"review": f"text number {i} " + "good" * (i % 2), "y": ["neg", "pos"][i % 2]} for i in range(40)]
    path = tmp_path / "mine.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    raw = {"datasets": {"mine": {"source": "jsonl", "path": str(path), "text_column": "review", "label_column": "y"}}}
    paths = ClassifyPaths(tmp_path)
    stats = prepare.run(parse_classify_params(raw), paths)
    assert stats["mine"]["n_train"] + stats["mine"]["n_val"] + stats["mine"]["n_test"] == 40
    assert stats["mine"]["class_counts"] == {"neg": 20, "pos": 20} and stats["mine"]["majority_share"] == 0.5
    prep = load_prepared(paths.prepared, "mine")
    assert prep.labels == ["neg", "pos"] and len(prep.y["train"]) == 28
    before = (paths.prepared / "mine" / "train.jsonl").read_bytes()
    raw["datasets"]["mine"]["labels"] = ["neg", "positive"]  # "pos" is outside the set: rejected, outputs kept
    with pytest.raises(DataValidationError, match="labels outside the label set"):
        prepare.run(parse_classify_params(raw), paths)
    assert (paths.prepared / "mine" / "train.jsonl").read_bytes() == before


@pytest.mark.parametrize("patch,message", [
    ({"student": {"n_qubit": 4}}, "student.n_qubit: unknown key"),
    ({"train": {"alpha": 1.5}}, "train.alpha"),
    ({"datasets": {"x": {"source": "csv"}}}, "needs `path`"),
    ({"datasets": {"Bad-Name": {"source": "bbc_news"}}}, "lower-case identifiers"),
    ({"seeds": []}, "seeds"),
])
def test_config_errors_are_one_line(tmp_path, patch, message):
    raw = yaml.safe_load((REPO / "classify" / "params.yaml").read_text())
    for key, value in patch.items():
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and key != "datasets" else value
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=message) as err:
        load_classify_params(path)
    assert "\n" not in str(err.value)


def test_dvc_yaml_lists_only_known_params_and_existing_code():
    from qelm_core.classify.config import ClassifyParams

    params = load_classify_params(REPO / "classify" / "params.yaml")
    assert isinstance(params, ClassifyParams) and len(params.seeds) >= 3
    stages = yaml.safe_load((REPO / "classify" / "dvc.yaml").read_text())["stages"]
    assert list(stages) == ["prepare", "features", "teacher", "train", "evaluate", "register"]
    for name, stage in stages.items():
        assert stage["cmd"] == f"qelm classify-{name} --params classify/params.yaml" and stage["wdir"] == ".."
        for entry in stage.get("params", []):
            for key in entry["classify/params.yaml"]:
                node = params
                for part in key.split("."):
                    assert hasattr(node, part), f"classify/dvc.yaml stage {name} lists unknown param {key}"
                    node = getattr(node, part)
        for dep in stage["deps"]:
            if dep.startswith("qelm_core/"):
                assert (REPO / dep).is_file(), dep


def test_feature_cache_restores_order_and_skips_the_model_on_rerun(tmp_path):
    import torch

    from qelm_core.classify.features import Encoder, encode

    loads = []

    def load_embed():
        loads.append(1)
        return lambda ids, mask: torch.stack([(ids * mask).sum(1).float(), mask.sum(1).float()], 1)  # (B, 2)

    def tokenize(texts):
        return [[ord(c) for c in t] for t in texts]

    texts = ["ccc", "a", "bb", "dddd", "", "e"]
    x, stats = encode(texts, Encoder("fake", 2, 0, tokenize, load_embed), tmp_path, shard_size=2, batch_size=2)
    assert x[:, 1].tolist() == [3, 1, 2, 4, 1, 1]  # lengths in input order (the empty text gets one pad token)
    assert x[0, 0] == 3 * ord("c") and stats["shards"] == 3 and stats["cached_shards"] == 0 and loads == [1]
    again, stats = encode(texts, Encoder("fake", 2, 0, tokenize, load_embed), tmp_path, shard_size=2, batch_size=2)
    assert (again == x).all() and stats["cached_shards"] == 3 and loads == [1]  # no model loaded
    other, _ = encode(texts, Encoder("fake-v2", 2, 0, tokenize, load_embed), tmp_path, shard_size=2, batch_size=2)
    assert len(loads) == 2  # another encoder identity never reuses these shards
