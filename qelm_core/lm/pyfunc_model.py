"""MLflow "model from code": this file *is* the logged model, so loading it unpickles nothing.

Input: a DataFrame with a `text` column (context text, tokenised with the teacher's tokenizer) or
a `context_ids` column (lists of student ids, length = the student's context), at most MAX_ROWS rows.
Output, per row: `probs` (the full next-token distribution over the student vocabulary), `top_tokens`,
`top_probs`. Locking, the row limit and 400 answers for bad input: qelm_core/pyfunc_base.py.
"""
from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd

from qelm_core.pyfunc_base import ServedModel

TOP_K = 5


class StudentModel(ServedModel):
    def load(self, artifacts: dict[str, str]) -> None:
        from qelm_core.lm.predict import NextTokenPredictor

        self.predictor = NextTokenPredictor.from_folder(artifacts["student"])

    def probe(self) -> pd.DataFrame:
        return pd.DataFrame({"context_ids": [[0] * self.predictor.context]})

    def answer(self, frame: pd.DataFrame) -> pd.DataFrame:
        from qelm_core.config import QelmError

        if "context_ids" in frame and frame["context_ids"].notna().all():
            try:
                rows = [np.asarray(c, dtype=np.int64).reshape(-1) for c in frame["context_ids"]]
            except (TypeError, ValueError):
                raise QelmError("context_ids: every row must be a list of integer token ids") from None
            k = self.predictor.context
            if any(len(r) != k for r in rows):
                raise QelmError(f"context_ids: every row must hold exactly {k} ids (the student's context)")
            ids = np.stack(rows)
        elif "text" in frame and frame["text"].notna().all():
            ids = np.stack([self.predictor.context_ids(str(t)) for t in frame["text"]])
        else:
            raise QelmError("give a `text` column (strings) or a `context_ids` column (lists of ids)")
        probs = self.predictor.probs(ids)  # (B, V)
        top = np.argsort(-probs, axis=1, kind="stable")[:, :TOP_K]
        return pd.DataFrame({
            "probs": [p.tolist() for p in probs],
            "top_tokens": [[self.predictor.decode(int(i)) for i in row] for row in top],
            "top_probs": [[float(p[i]) for i in row] for p, row in zip(probs, top)],
        })


mlflow.models.set_model(StudentModel())
