"""The one torch thread policy of every qelm process (issue 15: thread oversubscription).

Why: torch's default is one intra-op thread per CPU. A small model's ops are too short to split, so the
threads mostly meet at barriers, and when another CPU-bound process shares the cores (the other seed's
trainer, a second Dask worker, someone else's job) every barrier waits for a descheduled thread: on 2
cores a log-bilinear student step (batch 256) took 267 ms with 2 threads and 5-7 ms with 1.

Rule: `threads_for(work)` = min(allotted cores, max(1, work // WORK_PER_THREAD)), `work` = elements of a
step's state: batch x 2^n for a student (its (B, 2^n) amplitudes or logits), LARGE for an LLM forward.
So on 2 cores: 2 threads from batch x 2^n >= 2^19 (n >= 11 at batch 256), else 1. Why there: the rule
may not look at the load, so it takes the choice whose worse case is milder. Measured side by side (fused
engine, fwd+bwd, 6 layers, batch 256; 2 cores; 1 vs 2 threads, quiet vs one busy-loop process):
n = 8: 2 threads 1.3x faster quiet, 2.0-2.4x slower busy -> 1; n = 10: 1.5-1.7x vs 1.5-1.6x, a tie -> 1;
n = 11: 1.75x vs 1.6x -> 2; n = 12: 1.45-1.6x vs 1.4x -> 2 (1 thread loses nothing to one competitor:
each process keeps a core). The log-bilinear student: 1.0x quiet, 3.5x slower busy -> 1. An LLM-size
GEMM: 2.0x vs 1.2x -> every core. `qelm bench` (section threads) re-measures default vs policy.
Allotted cores: $QELM_CORES (qelm sets it for the processes it starts: training workers, Dask workers and
model-server workers split their parent's cores, so their threads add up to the cores, not cores each),
else the CPUs this process may run on. $QELM_THREADS (a whole number >= 1) overrides the rule in every
qelm process (workers included: then they may add up to more than the cores).

The count depends only on the work, the allotment and the override, never on the machine's load:
torch's reductions may depend on the thread count, and reruns must give bitwise the same metrics.
"""
from __future__ import annotations

import ctypes
import math
import os
import sys

from qelm_core.config import ConfigError

WORK_PER_THREAD = 2**18  # state elements per thread: 2 threads from n = 11 at batch 256 (docstring)
LARGE = math.inf  # an LLM forward (teacher, MiniLM): worth every allotted core
LLM_STAGES = ("teacher", "classify-features")
ENV_THREADS, ENV_CORES = "QELM_THREADS", "QELM_CORES"
_interop_set = False


def _env_count(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    if not (value.isdigit() and int(value) >= 1):
        what = "torch threads per qelm process" if name == ENV_THREADS else "cores this process may use"
        raise ConfigError(f"{name}={value!r}: give a whole number >= 1 ({what}), or unset it")
    return int(value)


def override() -> int | None:
    """$QELM_THREADS, validated; None when unset."""
    return _env_count(ENV_THREADS)


def cores() -> int:
    """The cores this process may use: $QELM_CORES, else the CPUs it may run on (affinity, not load)."""
    allotted = _env_count(ENV_CORES)
    if allotted:
        return allotted
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_for(work: float, allotted: int | None = None) -> int:
    """Intra-op threads for a step of `work` state elements (see the module docstring)."""
    fixed = override()
    if fixed:
        return fixed
    allotted = allotted or cores()
    return allotted if work == LARGE else max(1, min(allotted, int(work // WORK_PER_THREAD)))


def student_work(n_qubits: int, batch: int) -> int:
    """A student step's state: (batch, 2^n) amplitudes (quantum) or logits (classical)."""
    return batch * 2**n_qubits


def stage_work(stage: str, n_qubits: int, batch: int) -> float:
    """The teacher stages run an LLM (LARGE); every other stage's heaviest step is its student's."""
    return LARGE if stage in LLM_STAGES else student_work(n_qubits, batch)


def split(workers: int) -> int:
    """Cores for each of `workers` processes that share this process's cores (their sum <= the cores)."""
    return max(1, cores() // max(1, workers))


def child_env(allotted: int) -> dict[str, str]:
    """Environment for a process given `allotted` cores: qelm code reads QELM_CORES; OMP/MKL cap the
    OpenMP/BLAS pools of libraries that read them at load (numpy, qiskit-aer, a torch without qelm)."""
    return {ENV_CORES: str(allotted), "OMP_NUM_THREADS": str(allotted), "MKL_NUM_THREADS": str(allotted)}


def allot(allotted: int) -> None:
    """This process (a worker just started) gets `allotted` cores; it and its children see it."""
    os.environ.update(child_env(allotted))


def use(work: float) -> int:
    """Set torch's threads for `work` in this process; returns the intra-op count. Inter-op: 1 (qelm never
    forks torch tasks; an idle pool per process only adds threads), settable once, before parallel work."""
    import torch

    global _interop_set
    n = threads_for(work)
    torch.set_num_threads(n)
    if not _interop_set:
        _interop_set = True
        try:
            torch.set_num_interop_threads(1)
        except RuntimeError:  # inter-op work already ran in this process (e.g. under pytest): keep its pool
            pass
    return n


def keep_freed_memory() -> None:
    """glibc hands freed memory at the top of the heap, and every block above its (moving) mmap threshold,
    back to the kernel, and the next step faults it in again page by page: an n = 12 training step
    (batch 256, 1 thread, quiet) took 20-65 k minor page faults and 35-115 ms of kernel time of 0.39-0.49 s;
    beside another trainer the kernel's share grew until most of the time went there. Kept instead (no
    trim, a fixed 32 MiB mmap threshold, glibc's largest; the heap grows 64 MiB at a time, so fewer
    extensions): 0 faults, 0.35-0.37 s, bitwise the same results; the process keeps its peak heap until it
    exits. Blocks of 32 MiB and more (e.g. n = 12 validation batches) are still mapped and unmapped each
    time. Not glibc (musl, macOS): nothing to do."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # malloc.h
    libc.mallopt(m_trim_threshold, 2**31 - 1)
    libc.mallopt(m_top_pad, 64 << 20)
    libc.mallopt(m_mmap_threshold, 32 << 20)


def configure(allotted: int | None = None) -> None:
    """At the start of every qelm process (`qelm`, a training worker with its share `allotted`): validate
    the variables (one ConfigError line), export the allotment to child processes, keep freed memory.
    Torch is not imported here (`qelm --help` stays fast): what computes calls `use(work)`."""
    override()
    allot(allotted or cores())
    keep_freed_memory()
