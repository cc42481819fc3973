"""What every registered qelm model does when it serves, written once (the LM student and the classifier).

An MLflow scoring server runs requests in threads: concurrent calls into one torch model failed 2 of
2,000 requests under load (qelm bench), so calls run one at a time (a call uses the worker's torch
threads, qelm_core/threads.py; more workers serve more requests). Requests are bounded (MAX_ROWS).
A bad request raises MlflowException(INVALID_PARAMETER_VALUE), which the REST server answers with 400
and our one-line message (any other exception would be a 400 with a generic message).
"""
from __future__ import annotations

import threading

import pandas as pd
from mlflow.pyfunc import PythonModel

MAX_ROWS = 10_000  # per request: bounds memory and response size; split bigger batches


class ServedModel(PythonModel):
    """Subclasses implement `load(artifacts)`, `answer(frame) -> DataFrame` and `probe() -> DataFrame`
    (a tiny valid request: the registry's promotion gate sends it before a version becomes champion)."""

    def load(self, artifacts: dict[str, str]) -> None:
        raise NotImplementedError

    def answer(self, frame: pd.DataFrame) -> pd.DataFrame:
        raise NotImplementedError

    def probe(self) -> pd.DataFrame:
        raise NotImplementedError

    def load_context(self, context) -> None:
        self.lock = threading.Lock()
        self.load(dict(context.artifacts))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from qelm_core.config import QelmError

        frame = pd.DataFrame(model_input)
        try:
            if len(frame) == 0:
                raise QelmError("no rows in the request; send at least one row")
            if len(frame) > MAX_ROWS:
                raise QelmError(f"{len(frame)} rows in one request; send at most {MAX_ROWS} per request")
            with self.lock:
                return self.answer(frame)
        except QelmError as err:
            raise MlflowException(str(err), error_code=INVALID_PARAMETER_VALUE) from None
