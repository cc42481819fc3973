"""Great Expectations suites for the classification data (qelm_core.validation.run_suite: one ephemeral
GX context per check, a failed expectation is one DataValidationError line naming the fix).

  examples  every row has a label, every label is in the label set, no text is empty
  splits    every class has examples in every split, split sizes are the configured fractions
Class balance is not a pass/fail check: it is reported (meta.json, metrics, the README table).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from qelm_core.validation import Check, DataValidationError, run_suite


def validate_examples(name: str, texts: list[str], labels: list, label_set: list[str]) -> None:
    import great_expectations as gx

    if not texts:
        raise DataValidationError(f"{name}: no examples; check the dataset's path and columns")
    if len(label_set) < 2:
        raise DataValidationError(f"{name}: {len(label_set)} class(es) {label_set}; classification needs >= 2 labels")
    frame = pd.DataFrame({"text": texts, "label": labels, "n_chars": [len(t) for t in texts]})
    run_suite(f"classify_{name}_examples", frame, [
        Check(gx.expectations.ExpectColumnValuesToNotBeNull(column="label"),
              "rows without a label; fill in or remove them"),
        Check(gx.expectations.ExpectColumnValuesToBeInSet(column="label", value_set=list(label_set)),
              f"labels outside the label set {label_set}; fix the file or the dataset's `labels` in classify/params.yaml"),
        Check(gx.expectations.ExpectColumnValuesToBeBetween(column="n_chars", min_value=1),
              "empty texts; remove those rows"),
    ])


def validate_splits(name: str, split_labels: dict[str, list[int]], n_classes: int,
                    fractions: dict[str, float]) -> None:
    import great_expectations as gx

    total = sum(len(v) for v in split_labels.values())
    rows = []
    for split, labels in split_labels.items():
        counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)
        rows.append({"split": split, "fraction": len(labels) / max(total, 1), "min_class_count": int(counts.min())})
    frame = pd.DataFrame(rows)
    checks = [Check(gx.expectations.ExpectColumnValuesToBeBetween(column="min_class_count", min_value=1),
                    "a class has no example in some split; it needs >= 3 examples (better: dozens)")]
    tol = max(0.02, 2 * n_classes / max(total, 1))  # per-class rounding moves at most one example per class
    for split, frac in fractions.items():
        checks.append(Check(gx.expectations.ExpectColumnValuesToBeBetween(
            column="fraction", min_value=frac - tol, max_value=frac + tol, row_condition=f'split=="{split}"',
            condition_parser="pandas"), f"split {split} is not {frac:.2f} of the examples"))
    run_suite(f"classify_{name}_splits", frame, checks)
