"""Text in, next-token distribution out: the one inference path shared by the CLI and the MLflow pyfunc."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from qelm_core.config import QelmError
from qelm_core.lm.data import Vocab
from qelm_core.lm.student import load_student


@dataclass
class NextTokenPredictor:
    model: torch.nn.Module
    vocab: Vocab
    tokenizer: object | None  # None: callers give student ids, not text

    @classmethod
    def from_folder(cls, folder: str | Path, teacher_model: str = "smollm2", with_tokenizer: bool = True):
        from qelm_core.llm import load_tokenizer, resolve_teacher

        model, config = load_student(folder)
        if "vocab" not in config:
            raise QelmError(f"{folder}/config.json: no vocabulary recorded; re-run `qelm train`")
        tokenizer = load_tokenizer(resolve_teacher(teacher_model)) if with_tokenizer else None
        return cls(model.eval(), Vocab.from_json(config["vocab"]), tokenizer)

    @property
    def context(self) -> int:
        return self.model.params.context

    def context_ids(self, text: str) -> np.ndarray:
        """Text -> the last `context` student ids (left-padded with OTHER)."""
        if self.tokenizer is None:
            raise QelmError("this predictor has no tokenizer; pass token ids instead of text")
        if not text:
            raise QelmError("empty context text; give at least one word")
        llm_ids = np.asarray(self.tokenizer(text)["input_ids"], dtype=np.int64)
        ids = self.vocab.to_student(llm_ids)[-self.context:]
        return np.concatenate([np.zeros(self.context - len(ids), dtype=np.int64), ids])

    @torch.no_grad()
    def probs(self, context_ids: np.ndarray) -> np.ndarray:
        """(B, k) student ids -> (B, V) next-token probabilities."""
        ids = np.asarray(context_ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] != self.context:
            raise QelmError(f"context ids must have shape (batch, {self.context}), got {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab.size):
            raise QelmError(f"context ids must be in [0, {self.vocab.size})")
        return self.model(torch.from_numpy(ids)).exp().double().numpy()

    def top_k(self, text: str, k: int) -> list[tuple[str, float]]:
        p = self.probs(self.context_ids(text)[None])[0]
        best = np.argsort(-p, kind="stable")[:k]
        return [(self.decode(i), float(p[i])) for i in best]

    def decode(self, student_id: int) -> str:
        if student_id == 0 or self.tokenizer is None:
            return self.vocab.tokens[student_id]
        return self.tokenizer.decode([self.vocab.llm_ids[student_id]])
