"""MLflow "model from code": this file *is* the logged model, so loading it unpickles nothing.

Input: a DataFrame with a `text` column (context text, tokenised with the teacher's tokenizer) or
a `context_ids` column (lists of student ids, length = the student's context), at most MAX_ROWS rows.
Output, per row: `probs` (the full next-token distribution over the student vocabulary), `top_tokens`,
`top_probs`. Bad input raises MlflowException(INVALID_PARAMETER_VALUE): the REST server answers 400
with our one-line message (any other exception would be a 400 with a generic message).
"""
from __future__ import annotations

import threading

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

TOP_K = 5
MAX_ROWS = 10_000  # per request: bounds memory and response size; split bigger batches


class StudentModel(PythonModel):
    def load_context(self, context) -> None:
        from qelm_core.predict import NextTokenPredictor

        self.predictor = NextTokenPredictor.from_folder(context.artifacts["student"])
        # The scoring server runs requests in threads: concurrent calls into the model failed 2 of 2,000
        # requests under load (qelm bench); one call at a time costs nothing: a call uses the worker's
        # torch threads (qelm_core/threads.py: 1 for these small models; more workers for more requests).
        self.lock = threading.Lock()

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from qelm_core.config import QelmError

        try:
            return self._predict(pd.DataFrame(model_input))
        except QelmError as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None

    def _predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        from qelm_core.config import QelmError

        if len(frame) == 0:
            raise QelmError("no rows in the request; send at least one context")
        if len(frame) > MAX_ROWS:
            raise QelmError(f"{len(frame)} rows in one request; send at most {MAX_ROWS} per request")
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
        with self.lock:
            probs = self.predictor.probs(ids)  # (B, V)
        top = np.argsort(-probs, axis=1, kind="stable")[:, :TOP_K]
        return pd.DataFrame({
            "probs": [p.tolist() for p in probs],
            "top_tokens": [[self.predictor.decode(int(i)) for i in row] for row in top],
            "top_probs": [[float(p[i]) for i in row] for p, row in zip(probs, top)],
        })


mlflow.models.set_model(StudentModel())
