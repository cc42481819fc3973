"""Stage teacher: projected next-token distributions of the teacher LLM for every split, resumable."""
from __future__ import annotations

import numpy as np
import torch
from safetensors.numpy import save_file

from qelm_core.config import Params, Paths
from qelm_core.data import SPLITS, load_prepared
from qelm_core.evaluate import perplexity, ppl_uniform, ppl_unigram, target_probs
from qelm_core.io import atomic_dir, atomic_write_json
from qelm_core.progress import progress_bar
from qelm_core.teacher import load_teacher, merge_shards, resolve_teacher, score_shard, shard_dir, shard_path, shard_plan
from qelm_core.validation import validate_teacher


def run(params: Params, paths: Paths) -> dict:
    tp = params.teacher
    vocab, llm, ids = load_prepared(paths.prepared)
    source = resolve_teacher(tp.model)
    vocab_llm_ids = torch.tensor(vocab.llm_ids[1:], dtype=torch.long)
    plans = {s: (shard_dir(paths.shards, source, tp, vocab.digest(), s, llm[s]), shard_plan(len(llm[s]), tp))
             for s in SPLITS}
    todo = [(s, folder, i, windows) for s, (folder, shards) in plans.items()
            for i, windows in enumerate(shards) if not shard_path(folder, i).exists()]
    if todo:  # a resumed run loads the model only if some shard is missing
        model = load_teacher(source)
        with progress_bar() as bar:
            task = bar.add_task("teacher shards", total=len(todo))
            for split, folder, i, windows in todo:
                score_shard(model, llm[split], windows, vocab_llm_ids, tp, shard_path(folder, i))
                bar.advance(task)

    metrics: dict = {}
    scored, seconds = 0, 0.0
    with atomic_dir(paths.teacher) as tmp:
        for split in SPLITS:
            folder, shards = plans[split]
            (probs, secs, n_params), targets = merge_shards(folder, len(shards)), ids[split][1:]
            validate_teacher(split, probs, targets, len(ids[split]) - 1)
            save_file({"probs": probs, "targets": targets.astype(np.int32)}, str(tmp / f"{split}.safetensors"))
            if split != "train":  # fp16 storage can round a tiny probability to 0: floor at 1e-8
                metrics[f"ppl_teacher_{split}"] = perplexity(target_probs(probs, targets).clip(1e-8))
            metrics[f"tokens_{split}"] = int(len(targets))
            scored, seconds = scored + len(targets), seconds + secs
        metrics["ppl_uniform"] = ppl_uniform(vocab.size)
        metrics["ppl_unigram"] = ppl_unigram(ids["train"], ids["test"][1:], vocab.size)
        metrics["other_rate"] = float(np.mean(ids["test"][1:] == 0))
        metrics["teacher_tokens_per_s"] = round(scored / seconds, 1)
        metrics["params_teacher"] = n_params
        metrics["bytes_teacher"] = source.weights_bytes
    atomic_write_json(paths.metrics / "teacher.json", metrics)
    return metrics
