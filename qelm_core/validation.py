"""Great Expectations suites for every data hand-off (raw documents, prepared ids, teacher targets).

An ephemeral GX context per check: nothing is written to disk. A failed expectation becomes one
`DataValidationError` line naming the data, what was expected and how to fix it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from qelm_core.config import QelmError


class DataValidationError(QelmError):
    pass


@dataclass(frozen=True)
class Check:
    expectation: object  # a gx.expectations.* instance
    message: str  # what to tell the user when it fails


def run_suite(name: str, frame: pd.DataFrame, checks: list[Check]) -> None:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch_def = ctx.data_sources.add_pandas(name).add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
    suite = ctx.suites.add(gx.ExpectationSuite(name=name))
    for check in checks:
        suite.add_expectation(check.expectation)
    validation = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
    result = validation.run(batch_parameters={"dataframe": frame})
    for check, res in zip(checks, result.results):
        if not res.success:
            bad = res.result.get("partial_unexpected_list") or res.result.get("observed_value")
            raise DataValidationError(f"{name}: {check.message} (found: {_short(bad)})")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) < 120 else text[:117] + "..."


def validate_documents(facts: list[dict]) -> None:
    """Raw corpus files: non-empty, text (no NUL bytes), UTF-8."""
    import great_expectations as gx

    frame = pd.DataFrame(facts)
    try:
        run_suite("corpus", frame, [
            Check(gx.expectations.ExpectColumnValuesToBeBetween(column="n_bytes", min_value=1),
                  "empty file; give a corpus file with text in it"),
            Check(gx.expectations.ExpectColumnValuesToBeInSet(column="has_nul", value_set=[False]),
                  "binary file (NUL bytes); give UTF-8 text files only"),
            Check(gx.expectations.ExpectColumnValuesToBeInSet(column="utf8", value_set=[True]),
                  "not UTF-8; convert it, e.g. iconv -f latin1 -t utf-8 in.txt > out.txt"),
        ])
    except DataValidationError as err:  # GX reports values, not which file: name the offenders ourselves
        bad = [f["path"] for f in facts if f["n_bytes"] == 0 or f["has_nul"] or not f["utf8"]]
        raise DataValidationError(f"data.corpus: {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}: "
                                  f"{str(err).removeprefix('corpus: ')}") from None


def validate_prepared(splits: dict[str, np.ndarray], vocab_size: int, fractions: dict[str, float],
                      min_tokens: int) -> None:
    """Prepared student ids: every split non-empty and long enough, ids in range, fractions as configured."""
    import great_expectations as gx

    total = sum(len(v) for v in splits.values())
    rows = [{"split": s, "n_tokens": len(v), "fraction": len(v) / max(total, 1),
             "min_id": int(v.min()) if len(v) else -1, "max_id": int(v.max()) if len(v) else -1}
            for s, v in splits.items()]
    frame = pd.DataFrame(rows)
    checks = [
        Check(gx.expectations.ExpectColumnValuesToBeBetween(column="n_tokens", min_value=min_tokens),
              f"a split has fewer than {min_tokens} tokens; use a larger corpus or raise data.max_tokens"),
        Check(gx.expectations.ExpectColumnValuesToBeBetween(column="min_id", min_value=0, max_value=vocab_size - 1),
              "token ids out of range"),
        Check(gx.expectations.ExpectColumnValuesToBeBetween(column="max_id", min_value=0, max_value=vocab_size - 1),
              "token ids out of range"),
    ]
    for i, (split, frac) in enumerate(fractions.items()):
        checks.append(Check(gx.expectations.ExpectColumnValuesToBeBetween(
            column="fraction", min_value=frac - 0.01, max_value=frac + 0.01, row_condition=f'split=="{split}"',
            condition_parser="pandas"), f"split {split} is not {frac:.2f} of the tokens"))
    run_suite("prepared", frame, checks)


def validate_teacher(split: str, probs: np.ndarray, targets: np.ndarray, expected_rows: int) -> None:
    """Teacher targets: one row per target token, finite, each row a distribution (sum 1 within fp16)."""
    import great_expectations as gx

    if probs.shape[0] != expected_rows or targets.shape[0] != expected_rows:
        raise DataValidationError(
            f"teacher/{split}: {probs.shape[0]} rows for {expected_rows} targets; delete data/.shards and re-run")
    p = probs.astype(np.float32)
    frame = pd.DataFrame({"row_sum": p.sum(1), "finite": np.isfinite(p).all(1), "min_p": p.min(1)})
    run_suite(f"teacher_{split}", frame, [
        Check(gx.expectations.ExpectColumnValuesToBeInSet(column="finite", value_set=[True]),
              "NaN/inf in teacher probabilities; check the teacher model"),
        Check(gx.expectations.ExpectColumnValuesToBeBetween(column="row_sum", min_value=0.99, max_value=1.01),
              "teacher rows do not sum to 1"),
        Check(gx.expectations.ExpectColumnValuesToBeBetween(column="min_p", min_value=0.0),
              "negative teacher probabilities"),
    ])
