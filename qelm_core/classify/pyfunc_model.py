"""MLflow "model from code" for `qelm-classifier`: loading it unpickles nothing (weights are safetensors).

Input: a DataFrame with a `text` column and optionally a `dataset` column (which trained classifier to
use; default the first), at most MAX_ROWS rows. Output per row: `dataset`, `label`, `probs` (class
probabilities, in the order of that dataset's labels). Locking, the row limit and 400 answers for bad
input: qelm_core/pyfunc_base.py.
"""
from __future__ import annotations

import mlflow
import pandas as pd

from qelm_core.pyfunc_base import ServedModel


class ClassifierModel(ServedModel):
    def load(self, artifacts: dict[str, str]) -> None:
        from qelm_core.classify.predict import TextClassifier

        self.classifier = TextClassifier.from_folders(artifacts)

    def probe(self) -> pd.DataFrame:
        return pd.DataFrame({"text": ["The markets rose after the announcement."]})

    def answer(self, frame: pd.DataFrame) -> pd.DataFrame:
        from qelm_core.config import QelmError

        if "text" not in frame or not frame["text"].notna().all():
            raise QelmError("give a `text` column (strings), optionally a `dataset` column")
        default = next(iter(self.classifier.models))
        names = frame["dataset"].fillna(default).astype(str) if "dataset" in frame else pd.Series([default] * len(frame))
        out = pd.DataFrame({"dataset": names.values, "label": "", "probs": [[]] * len(frame)})
        for name in names.unique():
            rows = (names == name).values
            labels, probs = self.classifier.predict(frame.loc[rows, "text"].astype(str).tolist(), name)
            out.loc[rows, "label"] = labels
            out.loc[rows, "probs"] = pd.Series([p.tolist() for p in probs], index=out.index[rows])
        return out


mlflow.models.set_model(ClassifierModel())
