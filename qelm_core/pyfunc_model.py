"""MLflow "model from code": this file *is* the logged model, so loading it unpickles nothing.

Input: a DataFrame with a `text` column (context text, tokenised with the teacher's tokenizer) or
a `context_ids` column (lists of student ids, length = the student's context). Output, per row:
`probs` (the full next-token distribution over the student vocabulary), `top_tokens`, `top_probs`.
"""
from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

TOP_K = 5


class StudentModel(PythonModel):
    def load_context(self, context) -> None:
        from qelm_core.predict import NextTokenPredictor

        self.predictor = NextTokenPredictor.from_folder(context.artifacts["student"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from qelm_core.config import QelmError

        frame = pd.DataFrame(model_input)
        if "context_ids" in frame and frame["context_ids"].notna().all():
            ids = np.array([np.asarray(c, dtype=np.int64).reshape(-1) for c in frame["context_ids"]], dtype=np.int64)
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
