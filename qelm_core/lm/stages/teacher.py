"""Stage teacher: projected next-token distributions of the teacher LLM for every split, resumable.

The unit of work is a shard (`pending_shards` lists those not on disk yet; `score_shards` writes them,
in any order, in any process): `run` scores what is missing here and merges, and flows/ maps the same
shards over Dask workers before calling `run`, which then only merges.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file

from qelm_core import tracking
from qelm_core.config import Params, Paths
from qelm_core.lm.data import SPLITS, load_prepared
from qelm_core.lm.evaluate import perplexity, ppl_uniform, ppl_unigram, target_probs
from qelm_core.io import atomic_dir, atomic_write_json
from qelm_core.progress import progress_bar
from qelm_core.llm import load_teacher, resolve_teacher
from qelm_core.lm.teacher import merge_shards, score_shard, shard_dir, shard_path, shard_plan
from qelm_core.validation import validate_teacher


@dataclass(frozen=True)
class ShardJob:
    """One shard still to score: windows of `split`, written to shard_path(folder, index)."""

    split: str
    folder: Path
    index: int
    windows: tuple[tuple[int, int, int], ...]


def _plans(params: Params, paths: Paths, vocab, llm) -> dict:
    source = resolve_teacher(params.teacher.model)
    return {s: (shard_dir(paths.shards, source, params.teacher, vocab.digest(), s, llm[s]),
                shard_plan(len(llm[s]), params.teacher)) for s in SPLITS}


def _pending(plans: dict) -> list[ShardJob]:
    return [ShardJob(s, folder, i, tuple(windows)) for s, (folder, shards) in plans.items()
            for i, windows in enumerate(shards) if not shard_path(folder, i).exists()]


def pending_shards(params: Params, paths: Paths) -> list[ShardJob]:
    """The shards not yet on disk, in merge order (each one can be scored by any worker)."""
    vocab, llm, _ = load_prepared(paths.prepared)
    return _pending(_plans(params, paths, vocab, llm))


def score_shards(params: Params, paths: Paths, jobs: list[ShardJob], model) -> None:
    """Score `jobs` with an already loaded teacher; each shard is written atomically to its own file."""
    vocab, llm, _ = load_prepared(paths.prepared)
    vocab_llm_ids = torch.tensor(vocab.llm_ids[1:], dtype=torch.long)
    with progress_bar() as bar:
        task = bar.add_task("teacher shards", total=len(jobs))
        for job in jobs:
            score_shard(model, llm[job.split], list(job.windows), vocab_llm_ids, params.teacher,
                        shard_path(job.folder, job.index))
            bar.advance(task)


def run(params: Params, paths: Paths) -> dict:
    tracking.require_server(paths)  # an unreachable MLflow server fails now, not after the long work
    tp = params.teacher
    vocab, llm, ids = load_prepared(paths.prepared)
    source = resolve_teacher(tp.model)
    plans = _plans(params, paths, vocab, llm)
    todo = _pending(plans)
    if todo:  # a resumed run loads the model only if some shard is missing
        score_shards(params, paths, todo, load_teacher(source))

    metrics: dict = {}
    scored, seconds = 0, 0.0
    with atomic_dir(paths.teacher) as tmp:
        for split in SPLITS:
            folder, shards = plans[split]
            (probs, full, secs, n_params), targets = merge_shards(folder, len(shards)), ids[split][1:]
            validate_teacher(split, probs, targets, len(ids[split]) - 1)
            save_file({"probs": probs, "targets": targets.astype(np.int32), "target_probs_full": full},
                      str(tmp / f"{split}.safetensors"))
            if split != "train":  # fp16 storage can round a tiny probability to 0: floor at 1e-8
                metrics[f"ppl_teacher_{split}"] = perplexity(target_probs(probs, targets).clip(1e-8))
                metrics[f"ppl_full_teacher_{split}"] = perplexity(full.astype(np.float64).clip(1e-12))
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
