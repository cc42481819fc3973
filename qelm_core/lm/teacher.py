"""The teacher LLM (qelm_core/llm.py) scored in sliding windows and projected onto the student vocabulary.

Windows: the first window scores targets 1..window-1; each later one ends `stride` tokens further
and scores only its new targets, so every target (position 1..L-1) is scored exactly once with at
least `window - stride` tokens of context. Windows are grouped into shards (the unit of resume and
of distribution across workers); merging shards in order is byte-identical to one pass.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from qelm_core.config import TeacherParams
from qelm_core.llm import TeacherSource

def plan_windows(n_tokens: int, tp: TeacherParams) -> list[tuple[int, int, int]]:
    """[(start, end, first_target)]: feed ids[start:end], score targets first_target..end-1."""
    plan, end = [], 0
    while end < n_tokens:
        new_end = min(n_tokens, tp.window if end == 0 else end + tp.stride)
        start = max(0, new_end - tp.window)
        plan.append((start, new_end, max(end, 1)))
        end = new_end
    return [w for w in plan if w[1] > w[2]]


def shard_plan(n_tokens: int, tp: TeacherParams) -> list[list[tuple[int, int, int]]]:
    plan = plan_windows(n_tokens, tp)
    return [plan[i: i + tp.shard_windows] for i in range(0, len(plan), tp.shard_windows)]


@torch.inference_mode()
def score_windows(model, llm_ids: np.ndarray, windows, vocab_llm_ids: torch.Tensor, batch_size: int,
                  full_targets: bool = False):
    """Projected teacher distributions for the windows' targets, in order: (n_targets, V) float16; with
    `full_targets` also the probability of each actual next token in the teacher's FULL vocabulary,
    (n_targets,) float32 (its own perplexity, comparable across student vocabulary sizes).

    Runs the decoder body once per window and the output head only on the scored positions (the
    49k-wide head on every position would be ~20 % of the work for nothing).
    """
    from qelm_core.lm.data import project_probs

    body, head = model.base_model, model.get_output_embeddings()
    # windows of equal length batch together; order is restored by collecting per window
    by_window: dict[int, torch.Tensor] = {}
    full: dict[int, torch.Tensor] = {}
    groups: dict[int, list[int]] = {}
    for i, (s, e, _) in enumerate(windows):
        groups.setdefault(e - s, []).append(i)
    for length, members in groups.items():
        for b in range(0, len(members), batch_size):
            chunk = members[b: b + batch_size]
            x = torch.from_numpy(np.stack([llm_ids[windows[i][0]: windows[i][1]] for i in chunk]).astype(np.int64))
            hidden = body(input_ids=x).last_hidden_state  # (b, length, d)
            for row, i in enumerate(chunk):
                s, e, first = windows[i]
                # position p predicts token p+1: targets first..e-1 come from positions first-1..e-2
                h = hidden[row, first - 1 - s: e - 1 - s]
                probs = torch.softmax(head(h).float(), dim=-1)
                by_window[i] = project_probs(probs, vocab_llm_ids).to(torch.float16)
                actual = torch.from_numpy(llm_ids[first: e].astype(np.int64))
                full[i] = probs.gather(1, actual[:, None])[:, 0]
    projected = torch.cat([by_window[i] for i in range(len(windows))]).numpy()
    if not full_targets:
        return projected
    return projected, torch.cat([full[i] for i in range(len(windows))]).numpy()


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def shard_dir(root: Path, source: TeacherSource, tp: TeacherParams, vocab_hash: str, split: str,
              llm_ids: np.ndarray) -> Path:
    """Shards live under a key of everything they depend on (the scoring code too), so stale shards are never reused."""
    import hashlib
    import sys

    from qelm_core import llm
    from qelm_core.io import code_digest
    from qelm_core.lm import data

    h = hashlib.sha256()
    for part in (source.name, str(source.weights_bytes), tp.window, tp.stride, tp.shard_windows, vocab_hash, split,
                 code_digest(sys.modules[__name__], data, llm)):
        h.update(str(part).encode() + b"\0")
    h.update(np.ascontiguousarray(llm_ids, dtype=np.int64).tobytes())
    return root / f"{split}-{h.hexdigest()[:16]}"


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}.safetensors"


def score_shard(model, llm_ids: np.ndarray, windows, vocab_llm_ids: torch.Tensor, tp: TeacherParams,
                path: Path) -> None:
    """Score one shard and write it atomically, with its own timing (so a resumed run still reports speed)."""
    import time

    from safetensors.numpy import save

    from qelm_core.io import atomic_write_bytes

    start = time.perf_counter()
    probs, full = score_windows(model, llm_ids, windows, vocab_llm_ids, tp.batch_size, full_targets=True)
    meta = {"seconds": repr(time.perf_counter() - start), "params_teacher": str(count_parameters(model))}
    atomic_write_bytes(path, save({"probs": probs, "target_probs_full": full}, metadata=meta))


def merge_shards(folder: Path, n_shards: int) -> tuple[np.ndarray, np.ndarray, float, int]:
    """-> (projected probs in target order, full-vocabulary target probs, seconds spent scoring them,
    teacher parameter count)."""
    from safetensors import safe_open

    parts, full, seconds, n_params = [], [], 0.0, 0
    for i in range(n_shards):
        with safe_open(str(shard_path(folder, i)), framework="numpy") as f:
            parts.append(f.get_tensor("probs"))
            full.append(f.get_tensor("target_probs_full"))
            meta = f.metadata()
        seconds += float(meta["seconds"])
        n_params = int(meta["params_teacher"])
    return np.concatenate(parts), np.concatenate(full), seconds, n_params
