"""Stage classify-prepare: each dataset -> de-duplicated, validated, stratified train/val/test JSONL."""
from __future__ import annotations

from qelm_core.classify.config import ClassifyParams, ClassifyPaths
from qelm_core.classify.data import class_balance, load_dataset, split_table, subsample, write_prepared
from qelm_core.classify.validation import validate_examples, validate_splits
from qelm_core.io import atomic_write_json


def run(params: ClassifyParams, paths: ClassifyPaths) -> dict:
    sp, out, stats = params.split, {}, {}
    fractions = {"train": sp.train, "val": sp.val, "test": 1 - sp.train - sp.val}
    for name, dp in params.datasets.items():
        table = load_dataset(dp)
        validate_examples(name, table.texts, table.labels, table.label_set)
        table = subsample(table, dp.max_examples, sp.seed)
        splits = split_table(table, sp.train, sp.val, sp.seed)
        validate_splits(name, {s: d["label"] for s, d in splits.items()}, len(table.label_set), fractions)
        out[name] = (table, splits)
        counts = class_balance(splits, len(table.label_set))
        total = [sum(c) for c in zip(*counts.values())]
        stats[name] = {"n_examples": len(table.texts), "labels": table.label_set, "rules": table.notes,
                       **{f"n_{s}": len(d["label"]) for s, d in splits.items()},
                       "class_counts": dict(zip(table.label_set, total)),
                       "min_class_share": min(total) / sum(total), "majority_share": max(total) / sum(total)}
    write_prepared(paths.prepared, out)
    atomic_write_json(paths.metrics / "classify_prepare.json", stats)
    return stats
