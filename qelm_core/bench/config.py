"""`qelm bench`: what one run measures (BenchConfig), sized from params.yaml and the machine, and how
a step is timed (shared by every section)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from qelm_core.config import Params, QelmError


@dataclass(frozen=True)
class BenchConfig:
    n_qubits: tuple[int, ...]
    batches: tuple[int, ...]
    context: int
    layers: int
    repeats: int
    budget_s: float  # one fwd+bwd call may take at most this long (estimated before running)
    min_block_s: float  # each timed block runs enough calls to last this long
    mem_budget_mib: float
    torch_device: str
    teacher_windows: int  # windows scored per teacher pass
    teacher_window: int
    teacher_stride: int
    teacher_batch: int
    train_steps: int
    train_val_positions: int  # the validation pass inside the timed training run


def bench_config(params: Params, quick: bool, torch_device: str = "cpu") -> BenchConfig:
    tp = params.teacher
    common = dict(context=params.student.context, layers=params.student.layers, torch_device=torch_device,
                  mem_budget_mib=0.5 * mem_available_mib())
    if quick:
        return BenchConfig(n_qubits=(4, 6), batches=(1, 64), repeats=3, budget_s=2.0, min_block_s=0.03,
                           teacher_windows=4, teacher_window=64, teacher_stride=48, teacher_batch=2,
                           train_steps=3, train_val_positions=256, **common)
    return BenchConfig(n_qubits=(4, 6, 8, 10, 12), batches=(1, 256, 1024), repeats=5, budget_s=60.0,
                       min_block_s=0.2, teacher_windows=16, teacher_window=tp.window, teacher_stride=tp.stride,
                       teacher_batch=tp.batch_size, train_steps=50, train_val_positions=2048, **common)


def timed(step: Callable[[], None], calls: int) -> float:
    """Seconds per call over `calls` calls: torch.utils.benchmark's Timer (CUDA-synchronised), at this
    process's torch thread count (the Timer's own default would be 1 thread)."""
    from torch.utils import benchmark

    timer = benchmark.Timer("step()", globals={"step": step}, num_threads=torch.get_num_threads())
    return timer.timeit(calls).mean


def interleaved_rounds(steps: dict, calls: dict, repeats: int,
                       before: Callable[[object], None] | None = None) -> dict[object, list[float]]:
    """Seconds per call of each step over `repeats` interleaved rounds: every round times every step
    (`calls[name]` calls each, after `before(name)` sets its conditions), the order rotating from round
    to round, so slow drifts of a noisy machine fall on every step alike."""
    names, times = list(steps), {name: [] for name in steps}
    for r in range(repeats):
        k = r % max(len(names), 1)
        for name in names[k:] + names[:k]:
            if before is not None:
                before(name)
            times[name].append(timed(steps[name], calls[name]))
    return times


def check_torch_device(name: str) -> str:
    if name == "cpu":
        return name
    if not name.startswith("cuda"):
        raise QelmError(f"--torch-device: {name!r} is not supported; use cpu or cuda (cuda:N)")
    if not torch.cuda.is_available():
        raise QelmError(f"--torch-device {name}: CUDA is not available here (torch {torch.__version__}); "
                        "run on a machine with an NVIDIA GPU and a CUDA build of torch, or use --torch-device cpu")
    return name


def proc_kib(key: str, path: str = "/proc/self/status") -> int:
    with open(path) as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def mem_available_mib() -> float:
    try:
        return proc_kib("MemAvailable", "/proc/meminfo") / 1024
    except (OSError, StopIteration):  # not Linux
        return 8192.0
