"""MLflow "model from code" for `qelm-classifier`: loading it unpickles nothing (weights are safetensors).

Input: a DataFrame with a `text` column and optionally a `dataset` column (which trained classifier to
use; default the first). Output per row: `dataset`, `label`, `probs` (class probabilities, in the
order of that dataset's labels).
"""
from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class ClassifierModel(PythonModel):
    def load_context(self, context) -> None:
        from qelm_core.classify.predict import TextClassifier

        self.classifier = TextClassifier.from_folders(dict(context.artifacts))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
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
