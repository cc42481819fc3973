"""Stage prepare: corpus -> data/raw (recorded copy) + data/prepared (vocab, id streams), GX-validated."""
from __future__ import annotations

import hashlib
import json

import numpy as np

from qelm_core import tracking
from qelm_core.config import Params, Paths
from qelm_core.lm.data import (SPLITS, CorpusError, build_vocab, clean_text, document_facts, find_documents,
                            split_stream, write_prepared)
from qelm_core.io import atomic_dir
from qelm_core.llm import load_tokenizer, resolve_teacher
from qelm_core.validation import validate_documents, validate_prepared


def run(params: Params, paths: Paths) -> dict:
    tracking.require_server(paths)  # an unreachable MLflow server fails now, not after the long work
    docs = find_documents(params.data)
    validate_documents([document_facts(d) for d in docs])
    tokenizer = load_tokenizer(resolve_teacher(params.teacher.model))
    streams = [np.asarray(tokenizer(clean_text(d.raw))["input_ids"], dtype=np.int64) for d in docs]
    llm_ids = np.concatenate(streams)
    if params.data.max_tokens:
        llm_ids = llm_ids[: params.data.max_tokens]
    llm_splits = split_stream(llm_ids, params.data)
    min_tokens = params.student.context + 2
    if min(len(v) for v in llm_splits.values()) < min_tokens:
        raise CorpusError(f"corpus too small: {len(llm_ids)} tokens leave a split under {min_tokens} tokens; "
                          "use a larger corpus or raise data.max_tokens")
    vocab = build_vocab(llm_splits["train"], params.vocab_size, tokenizer.convert_ids_to_tokens)
    vocab.tokenizer = resolve_teacher(params.teacher.model).name
    id_splits = {s: vocab.to_student(v) for s, v in llm_splits.items()}
    fractions = {"train": params.data.split_train, "val": params.data.split_val,
                 "test": 1 - params.data.split_train - params.data.split_val}
    validate_prepared(id_splits, vocab.size, fractions, min_tokens)

    stats = {"documents": [d.name for d in docs], "vocab_size": vocab.size, "vocab_hash": vocab.digest(),
             "tokenizer_vocab_size": len(tokenizer),
             **{f"tokens_{s}": int(len(id_splits[s])) for s in SPLITS},
             **{f"other_rate_{s}": float(np.mean(id_splits[s] == 0)) for s in SPLITS}}
    manifest = [{"name": d.name, "source": str(d.path), "bytes": len(d.raw),
                 "sha256": hashlib.sha256(d.raw).hexdigest()} for d in docs]
    with atomic_dir(paths.raw) as raw_tmp, atomic_dir(paths.prepared) as prep_tmp:
        for d in docs:
            (raw_tmp / f"{d.name}.txt").write_bytes(d.raw)
        (raw_tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        write_prepared(prep_tmp, vocab, llm_splits, id_splits, stats)
    return stats
