"""`qelm bench` section `threads`: training throughput with torch's default threads vs qelm's thread policy
(qelm_core/threads.py), quiet and with a competing CPU-bound process, side by side in one run.

Per student of params.yaml (the student and its classical twin, as `qelm train` trains them): the
training step of distill.train (forward, KD loss, backward, Adam) on one fixed random batch of
params.train.batch_size. Four cells per round, {quiet, busy} x {default, policy}, the order rotating:
default = torch's own choice (one thread per CPU this process may use), policy = threads.threads_for(the
student's work). Busy = ONE python busy-loop process (the issue's case: one other CPU-bound job, e.g. a
second Dask worker; not one per core), started once, resumed (SIGCONT) for the busy blocks and stopped
(SIGSTOP) for the quiet ones, killed at the end (also if we die: PR_SET_PDEATHSIG). "Quiet" means no
competitor of ours only: the load average is recorded beside the figures. Ratios: median over rounds of
the two times of one round, so a machine that other users load meanwhile shifts both alike.
"""
from __future__ import annotations

import math
import os
import signal
import statistics
import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from qelm_core import threads as policy
from qelm_core.bench.config import BenchConfig, interleaved_rounds, timed
from qelm_core.config import Params

CONDITIONS, CHOICES = ("quiet", "busy"), ("default", "policy")
COMPETITOR = "1 python busy-loop process (`while True: pass`), SIGCONT for busy blocks, SIGSTOP for quiet ones"


def _student_step(params: Params, kind: str) -> Callable[[], None]:
    """One step of the training loop (qelm_core/training.py) for params' student of `kind`, on a fixed
    random batch (no data needed)."""
    from qelm_core.lm.student import build_student
    from qelm_core.training import kd_loss

    p = params.model_copy(update={"student": params.student.model_copy(update={"kind": kind})})
    model, tp, device = build_student(p), p.train, p.device.torch_device
    optimizer = torch.optim.Adam(model.parameters(), lr=tp.lr)
    V, B, g = 2**p.student.n_qubits, tp.batch_size, torch.Generator().manual_seed(p.seed)
    x = torch.randint(0, V, (B, p.student.context), generator=g).to(device)
    y = torch.randint(0, V, (B,), generator=g).to(device)
    teacher = torch.softmax(torch.randn(B, V, generator=g), dim=1).to(device)

    def step() -> None:
        loss = kd_loss(model(x), teacher, y, tp.alpha, tp.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def _die_with_parent() -> None:
    if sys.platform == "linux":
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


@contextmanager
def competitor() -> Iterator[Callable[[bool], None]]:
    """A busy-loop process, stopped at first; yields set_busy(bool); always killed."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent)
    state = {"busy": True}

    def set_busy(busy: bool) -> None:
        if busy != state["busy"]:
            os.kill(proc.pid, signal.SIGCONT if busy else signal.SIGSTOP)
            state["busy"] = busy
            time.sleep(0.02)  # let the scheduler see the change before the clock starts

    try:
        set_busy(False)
        yield set_busy
    finally:
        proc.kill()
        proc.wait()


def _bench_student(step: Callable[[], None], counts: dict[str, int], cfg: BenchConfig,
                   set_busy: Callable[[bool], None]) -> dict:
    set_busy(False)
    first = {}
    for choice in CHOICES:  # warm-up of each thread count (allocations, thread pool start)
        torch.set_num_threads(counts[choice])
        step()
        first[choice] = timed(step, 1)
    calls = max(1, min(50, math.ceil(cfg.min_block_s / max(min(first.values()), 1e-6))))
    cells = [(c, t) for c in CONDITIONS for t in CHOICES]

    def conditions(cell: tuple[str, str]) -> None:
        set_busy(cell[0] == "busy")
        torch.set_num_threads(counts[cell[1]])

    times = interleaved_rounds({cell: step for cell in cells}, {cell: calls for cell in cells}, cfg.repeats, conditions)
    set_busy(False)
    def ratio(a: tuple[str, str], b: tuple[str, str]) -> float:  # within each round, then the median
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

    return {"ms": {c: {t: statistics.median(times[(c, t)]) * 1e3 for t in CHOICES} for c in CONDITIONS},
            "repeats": cfg.repeats, "calls_per_repeat": calls,
            "default_vs_policy": {c: ratio((c, "default"), (c, "policy")) for c in CONDITIONS},
            "busy_vs_quiet": {t: ratio(("busy", t), ("quiet", t)) for t in CHOICES}}


def bench_threads(params: Params, cfg: BenchConfig) -> dict:
    before, default, cores = os.getloadavg()[0], len(os.sched_getaffinity(0)), policy.cores()
    kinds = {"student": params.student.kind, "classical": "classical"}  # as `qelm train` names them
    batch, old = params.train.batch_size, torch.get_num_threads()
    students = {}
    try:
        with competitor() as set_busy:
            for name, kind in kinds.items():
                work = policy.student_work(params.student.n_qubits, batch)
                counts = {"default": default, "policy": policy.threads_for(work)}
                row = _bench_student(_student_step(params, kind), counts, cfg, set_busy)
                students[name] = {"kind": kind, "n_qubits": params.student.n_qubits, "batch": batch, "work": work,
                                  "default_threads": counts["default"], "policy_threads": counts["policy"], **row,
                                  "tokens_per_s": {c: {t: batch / row["ms"][c][t] * 1e3 for t in CHOICES}
                                                   for c in CONDITIONS}}
    finally:
        torch.set_num_threads(old)
    return {"status": "ok", "reason": None, "cpus": default, "cores_allotted": cores,
            "override": policy.override(), "competitor": COMPETITOR, "load_avg_1min": [before, os.getloadavg()[0]],
            "students": students,
            "definition": "one distill.train step (forward, KD loss, backward, Adam; batch = train.batch_size) "
                          "per call; default = torch's thread count (one per CPU), policy = "
                          "qelm_core/threads.py; default_vs_policy = median over rounds of default time / "
                          "policy time in the same round (> 1: the policy is faster); busy = with one "
                          "competing busy-loop process; load_avg_1min = before and after the section"}
