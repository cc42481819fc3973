"""Distillation of the LM students: data, the per-step batches, one training job per (kind, seed), seeds
in worker processes, the summary over seeds.

The loop itself -- KD loss, Adam, lr schedule (`train.schedule`: constant, or cosine from `lr` to 0 over
`steps`), early stop, checkpoints that resume exactly -- is qelm_core/training.py, shared with the
classifier. The batch of step s is drawn from a generator seeded with (seed, s), so a resumed run sees
the batches an uninterrupted one would.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from qelm_core import training
from qelm_core.config import TrainParams
from qelm_core.io import atomic_write_text, code_digest


@dataclass
class SplitData:
    contexts: torch.Tensor  # (N, k) long
    targets: torch.Tensor  # (N,) long
    teacher: torch.Tensor  # (N, V) float16


@dataclass
class TrainResult:
    steps: int
    seconds: float
    samples_per_s: float
    best_val_ppl: float
    final_train_loss: float
    history: list[dict] = field(default_factory=list)


@torch.no_grad()
def mean_nll(model, data: SplitData, batch: int = 2048) -> float:
    total = 0.0
    for i in range(0, len(data.targets), batch):
        logp = model(data.contexts[i: i + batch])
        total += F.nll_loss(logp, data.targets[i: i + batch], reduction="sum").item()
    return total / len(data.targets)


def batch_indices(seed: int, step: int, n: int, size: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    return torch.randint(0, n, (size,), generator=gen)


def run_key(config: dict) -> str:
    """Checkpoints are only resumed by the run they belong to (same params, same data, same code: after an
    edit of the training code a finished checkpoint is not "resumed", which would skip the retraining
    `dvc repro` asked for)."""
    from qelm_core.quantum import circuits, fused
    from qelm_core.lm import student

    code = code_digest(sys.modules[__name__], training, student, circuits, fused)
    return hashlib.sha256(json.dumps({**config, "code": code}, sort_keys=True).encode()).hexdigest()[:16]


def train(model, train_data: SplitData, val_data: SplitData, tp: TrainParams, seed: int, checkpoint: Path,
          key: str, on_eval: Callable[[dict], None] | None = None, progress=None) -> TrainResult:
    """Train `model` in place; on return it holds the best-validation weights (lowest perplexity)."""
    n = len(train_data.targets)

    def batch_at(step: int) -> tuple:
        idx = batch_indices(seed, step, n, tp.batch_size)  # (B,)
        return train_data.contexts[idx], train_data.teacher[idx].float(), train_data.targets[idx]

    def validate(model) -> tuple[float, dict]:
        val_ppl = math.exp(mean_nll(model, val_data))
        return val_ppl, {"val_ppl": val_ppl}

    r = training.fit(model, batch_at, validate, steps=tp.steps, eval_every=tp.eval_every,
                     checkpoint_every=tp.checkpoint_every, lr=tp.lr, alpha=tp.alpha, temperature=tp.temperature,
                     patience=tp.patience, schedule=tp.schedule, checkpoint=checkpoint, key=key, on_eval=on_eval,
                     progress=progress)
    return TrainResult(steps=r.steps, seconds=r.seconds, samples_per_s=r.steps * tp.batch_size / r.seconds,
                       best_val_ppl=r.best_score, final_train_loss=r.history[-1]["train_loss"], history=r.history)


def split_data(contexts: np.ndarray, targets: np.ndarray, teacher: np.ndarray) -> SplitData:
    return SplitData(torch.from_numpy(contexts).long(), torch.from_numpy(targets).long(), torch.from_numpy(teacher))


def write_history_csv(path: Path, student: list[dict], classical: list[dict]) -> None:
    """One row per evaluation step: both models' validation perplexity (DVC plots reads it)."""
    rows: dict[int, dict] = {}
    for name, history in (("student", student), ("classical", classical)):
        for h in history:
            rows.setdefault(h["step"], {})[name] = h["val_ppl"]
    lines = ["step,student_val_ppl,classical_val_ppl"] + [
        f"{s},{r.get('student', '')},{r.get('classical', '')}" for s, r in sorted(rows.items())]
    atomic_write_text(path, "\n".join(lines) + "\n")


def load_distill_data(paths, context: int) -> tuple[dict[str, SplitData], "object", dict[str, np.ndarray]]:
    """Prepared ids + teacher targets -> (SplitData per split, vocab, student id streams per split)."""
    from safetensors.numpy import load_file

    from qelm_core.lm.data import contexts, load_prepared

    vocab, _, ids = load_prepared(paths.prepared)
    out = {}
    for split in ("train", "val", "test"):
        teacher = load_file(str(paths.teacher / f"{split}.safetensors"))
        out[split] = split_data(contexts(ids[split], context), ids[split][1:], teacher["probs"])
    return out, vocab, ids


def train_job(root: str, params_json: str, name: str, kind: str, seed: int, out_dir: str, extra_config: dict,
              progress=None) -> TrainResult:
    """Train one student (kind, seed) from the prepared data under `root`; save it to out_dir/<name>-s<seed>/.
    Self-contained (reads its own data), so a worker process can run it; torch threads from its work and
    this process's cores (qelm_core/threads.py)."""
    from qelm_core import threads
    from qelm_core.lm.basis import load_basis
    from qelm_core.config import Params, Paths
    from qelm_core.lm.student import build_student, save_student

    paths = Paths(Path(root))
    base = Params.model_validate_json(params_json)
    params = base.model_copy(update={"seed": seed, "student": base.student.model_copy(update={"kind": kind})})
    threads.use(threads.student_work(params.student.n_qubits, params.train.batch_size))
    data, vocab, _ = load_distill_data(paths, params.student.context)
    basis = torch.from_numpy(load_basis(paths.basis / "basis.json", params.student.n_qubits, vocab.digest()))
    model = build_student(params, torch.tensor(vocab.counts, dtype=torch.float64), basis)
    key = run_key({"model": name, "params": params.model_dump(exclude={"evaluate", "registry"}), "vocab": vocab.digest(),
                   "basis": basis.tolist(), "n_train": len(data["train"].targets)})
    result = train(model, data["train"], data["val"], params.train, seed, paths.checkpoints / f"{name}_s{seed}.safetensors",
                   key, eval_line(name, seed, params.train.steps, progress), progress)
    save_student(model, Path(out_dir) / f"{name}-s{seed}", {"vocab": vocab.to_json(), "seed": seed, **extra_config})
    return result


def eval_line(name: str, seed: int, steps: int, progress=None) -> Callable[[dict], None] | None:
    """on_eval that prints one line per evaluation (a stage log under DVC/Prefect shows the validation
    perplexity as training goes, from worker processes too); None under a rich bar, which shows the steps."""
    from rich.progress import Progress

    if isinstance(progress, Progress):
        return None

    def show(row: dict) -> None:
        # one write of the whole line, newline included (print writes the text and its end separately):
        # lines from parallel workers then never interleave (a pipe write under 4 KiB is atomic)
        sys.stderr.write(f"train: {name} seed {seed} step {row['step']}/{steps}: val ppl {row['val_ppl']:.3f}\n")
        sys.stderr.flush()
    return show


def train_workers(n_jobs: int, seeds: int = 1) -> int:
    """Training processes: $QELM_TRAIN_WORKERS, else one per seed, up to the number of jobs. The quantum
    seeds are the work (a classical twin takes 1-5 % of its quantum student's time and queues behind
    them); each worker gets cores // workers threads. 3 seeds on 2 cores: one thread each, side by side
    (1.5 seed-times instead of 2 in two rounds; 146 s vs ~185 s, identical weights). One seed: trained in
    this process on every core, the twin after it (n = 12 on 2 cores: 0.24 s a step with 2 threads
    against 0.40 s with 1, which the quantum student had while paired with its twin)."""
    import os

    from qelm_core.config import ConfigError

    value = os.environ.get("QELM_TRAIN_WORKERS", "")
    if value and not (value.isdigit() and int(value) >= 1):
        raise ConfigError(f"QELM_TRAIN_WORKERS={value!r}: give a whole number >= 1 (or unset it)")
    return min(n_jobs, int(value) if value else max(1, seeds))


def _worker_init(cores: int) -> None:
    """Worker processes get their share of the cores (their threads add up to the parent's cores), die
    with their parent (a SIGKILLed `qelm train` leaves no trainer behind) and leave signals to it: a
    worker that died of the group's SIGTERM first would turn the parent's clean unwinding into a
    broken-pool error."""
    import ctypes
    import signal
    import sys

    from qelm_core import threads

    threads.configure(cores)
    if sys.platform == "linux":
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and a group SIGTERM go to the parent, which
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # ends the MLflow run and then kills its workers


def train_all(root: Path, params, jobs: list[tuple[str, str, int]], out_dir: Path, extra_config: dict,
              workers: int, progress=None, on_done=None) -> dict[tuple[str, int], TrainResult]:
    """Every (name, kind, seed) job, longest first as listed; `workers` > 1: that many spawned processes,
    each allotted cores // workers (threads.split), else in this process -> {(name, seed): TrainResult}."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import psutil

    from qelm_core import threads

    args = [(str(root), params.model_dump_json(), name, kind, seed, str(out_dir), extra_config) for name, kind, seed in jobs]
    results = {}
    if workers <= 1:
        for a in args:
            results[(a[2], a[4])] = train_job(*a, progress=progress)
            if on_done:
                on_done(a[2], a[4], results[(a[2], a[4])])
        return results
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init,
                               initargs=(threads.split(workers),))
    try:  # a worker that dies (OOM, kill) fails the stage with BrokenProcessPool instead of hanging it
        pending = {(a[2], a[4]): pool.submit(train_job, *a) for a in args}
        for key, job in pending.items():
            results[key] = job.result()
            if on_done:
                on_done(*key, results[key])
    except BaseException:  # an error, SIGTERM, Ctrl-C: stop the other trainings now, not after they finish
        for child in psutil.Process().children():
            try:
                if "--multiprocessing-fork" in child.cmdline():  # the pool's workers, not its resource tracker
                    child.kill()
            except psutil.Error:  # already gone
                pass
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


def seed_summary(name: str, runs: dict[int, TrainResult], models: dict) -> dict:  # models: {seed: model}
    """Mean and sd over seeds of the validation perplexity, and the seed chosen on it (never on test)."""
    import statistics

    from qelm_core.lm.student import param_counts

    best = min(runs, key=lambda s: runs[s].best_val_ppl)
    vals = [r.best_val_ppl for r in runs.values()]
    return {f"{name}_val_ppl": statistics.fmean(vals), f"{name}_val_ppl_sd": statistics.stdev(vals) if len(vals) > 1 else 0.0,
            f"{name}_selected_seed": best, f"{name}_selected_val_ppl": runs[best].best_val_ppl,
            f"{name}_train_loss": runs[best].final_train_loss, f"{name}_steps": runs[best].steps,
            f"{name}_seconds": round(sum(r.seconds for r in runs.values()), 2),
            f"{name}_samples_per_s": round(statistics.fmean(r.samples_per_s for r in runs.values()), 1),
            **{f"{name}_params_{k}": v for k, v in param_counts(models[best]).items()}}
