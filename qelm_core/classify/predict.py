"""Text -> label with saved classifier students (the MLflow pyfunc and `qelm classify-predict` use this)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qelm_core.classify.features import Encoder, load_minilm, load_teacher_encoder
from qelm_core.classify.models import load_model
from qelm_core.config import QelmError


def encoder_for(cfg: dict) -> Encoder:
    fs = cfg["feature_settings"]
    if cfg["features"] == "minilm":
        return load_minilm(fs["encoder_max_tokens"])
    return load_teacher_encoder(fs["teacher_model"], fs["teacher_layer"], fs["teacher_max_tokens"], fs["teacher_dtype"])


class TextClassifier:
    """Saved students by dataset name; the sentence encoder each needs is loaded once, on first use."""

    def __init__(self, models: dict[str, tuple]):
        self.models = models  # name -> (model, config)
        self._encoders: dict[str, Encoder] = {}

    @classmethod
    def from_folders(cls, folders: dict[str, str | Path]) -> "TextClassifier":
        return cls({name: load_model(Path(folder)) for name, folder in folders.items()})

    def _encode(self, texts: list[str], cfg: dict) -> torch.Tensor:
        key = f"{cfg['features']}|{sorted(cfg['feature_settings'].items())}"
        if key not in self._encoders:
            self._encoders[key] = encoder_for(cfg)
        enc = self._encoders[key]
        ids = enc.tokenize(texts)
        width = max(1, max(len(x) for x in ids))
        batch = torch.full((len(ids), width), enc.pad_id, dtype=torch.long)
        mask = torch.zeros_like(batch)
        for row, x in enumerate(ids):
            batch[row, : len(x)], mask[row, : len(x)] = torch.tensor(x, dtype=torch.long), 1
        with torch.inference_mode():
            return enc.embed(batch, mask).float()  # (B, d)

    def predict(self, texts: list[str], dataset: str | None = None) -> tuple[list[str], np.ndarray]:
        """-> (labels, probs (B, C)) for texts of one dataset (default: the first one)."""
        name = dataset or next(iter(self.models))
        if name not in self.models:
            raise QelmError(f"unknown dataset {name!r}; this model knows {', '.join(self.models)}")
        model, cfg = self.models[name]
        with torch.no_grad():
            probs = torch.softmax(model(self._encode(list(texts), cfg)), -1).double().numpy()
        return [cfg["labels"][i] for i in probs.argmax(1)], probs
