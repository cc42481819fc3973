"""`qelm bench`: circuit engines, teacher inference and training throughput, measured side by side.

Engines (one fwd+bwd of an NLL loss over the 2^n probabilities, gradients to the weights AND the input
angles; the student's circuit `circuits.ansatz(n, context, layers)` with params' context/layers):
    fused            qelm_core/fused.py, complex64, on --torch-device
    default.qubit    PennyLane backprop + parameter broadcasting, float64, on --torch-device
    lightning.qubit  PennyLane adjoint (2^n projector read-outs, one circuit per sample), CPU
Timing: per (n, batch) cell every engine is warmed up once, then timed in `repeats` rounds in which
the engines alternate (the order rotates each round), each round running enough calls to last
>= min_block_s. Reported: the median per call, samples/s = batch / median, and `time_vs_fused` =
the median over rounds of (engine time / fused time in the same round): on a noisy machine the
ratio is more trustworthy than either time. Cells other than fused (the reference) are skipped,
with the reason in the JSON, when the engine's cap says so (lightning: n <= 10, batch <= 256) or
when one call is estimated (see `_skip_reason`) to exceed budget_s seconds or the memory budget. A
call slower than budget_s is timed once only.
Memory: peak resident-set growth of ONE fwd+bwd in a fresh process per (engine, n, batch) (forked
from a forkserver that has only imported torch/PennyLane): a batch-1 call first loads the libraries,
then the peak RSS is reset (Linux /proc/self/clear_refs) and `peak_extra_mib` = VmHWM - VmRSS
around the measured call. On CUDA also `peak_extra_mib_cuda` (torch's allocator peak).

Teacher: `teacher.score_windows` (the pipeline: body once, head on the scored positions, projection)
vs a bare `softmax(model(input_ids).logits)` over the same batches, alternating; input tokens/s and
`pipeline_vs_bare` (target >= 0.9). Training: a short `distill.train` of the params' student
(steps, one validation pass and checkpoint writes included).

bench.json: {"schema", "created", "git_commit", "host", "config", "cells": [one per engine x n x batch:
engine, n, batch, device, status ok|skipped, reason, ms, ms_min, ms_max, samples_per_s,
time_vs_fused, repeats, calls_per_repeat, peak_extra_mib, memory_note], "ratios": {engine: [{n, batch,
time_vs_fused}]}, "teacher": {...}, "training": {...}, "elapsed_s", "plot", "mlflow_run_id"}.
"""
from __future__ import annotations

import gc
import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from qelm_core.bench_memory import MemoryProbe, mem_available_mib
from qelm_core.bench_pipeline import bench_dvc_repro, bench_serving, bench_teacher, bench_training
from qelm_core.circuits import ansatz, build_qnode
from qelm_core.config import DeviceParams, Params, Paths, QelmError
from qelm_core.devices import diff_method_for, make_device
from qelm_core.fused import compile_fused
from qelm_core.io import atomic_write_json
from qelm_core.plots import samples_plot

SCHEMA = "qelm-bench/1"
ENGINES = ("fused", "default.qubit", "lightning.qubit")
LIGHTNING_MAX_N, LIGHTNING_MAX_BATCH = 10, 256


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


def check_torch_device(name: str) -> str:
    if name == "cpu":
        return name
    if not name.startswith("cuda"):
        raise QelmError(f"--torch-device: {name!r} is not supported; use cpu or cuda (cuda:N)")
    if not torch.cuda.is_available():
        raise QelmError(f"--torch-device {name}: CUDA is not available here (torch {torch.__version__}); "
                        "run on a machine with an NVIDIA GPU and a CUDA build of torch, or use --torch-device cpu")
    return name


# ------------------------------------------------------------------ engines


def make_step(engine: str, n: int, context: int, layers: int, batch: int, torch_device: str) -> Callable[[], None]:
    """One fwd+bwd of the NLL of random targets under the circuit's probabilities (inputs built once)."""
    spec = ansatz(n, context, layers)
    device = "cpu" if engine == "lightning.qubit" else torch_device
    if engine == "fused":
        f, dtype = compile_fused(spec, dtype=torch.complex64), torch.float32
    else:
        dp = DeviceParams(name=engine)
        f, dtype = build_qnode(spec, make_device(dp, n), diff_method_for(dp, training=True)), torch.float64
    g = torch.Generator().manual_seed(n * 10_000 + batch)
    angles = (math.pi * torch.rand(batch, context, n, generator=g, dtype=dtype)).to(device).requires_grad_()
    weights = (0.3 * torch.randn(spec.weight_shape, generator=g, dtype=dtype)).to(device).requires_grad_()
    targets = torch.randint(0, 2**n, (batch,), generator=g).to(device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step() -> None:
        angles.grad = weights.grad = None
        probs = f(angles, weights).reshape(batch, 2**n)
        F.nll_loss(torch.log(probs.clamp_min(1e-12)), targets).backward()
        sync()

    return step


def _timed(step: Callable[[], None], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        step()
    return (time.perf_counter() - start) / calls


def _scaled(engine: str, n: int, batch: int, done: list[dict]) -> tuple[float, float, str] | None:
    """(seconds, MiB, how): the same batch at the nearest smaller n measured, x 2^dn * n/n0 (state size
    x gate count). Pessimistic at small n, where per-call overhead dominates."""
    lower = [c for c in done if c["engine"] == engine and c.get("ms") and c["batch"] == batch and c["n"] < n]
    if not lower:
        return None
    base = max(lower, key=lambda c: c["n"])
    scale = 2 ** (n - base["n"]) * n / base["n"]
    return (base["ms"] / 1e3 * scale, (base.get("peak_extra_mib") or 0.0) * scale,
            f"x{scale:.1f} from n={base['n']}, batch={batch}")


def _affine(n: int, batch: int, points: list, probe) -> tuple[float, str] | None:
    """(seconds, how): overhead + per-sample cost through the two largest smaller batches timed at this n
    (`points`: (batch, seconds)); with only one, `probe(b)` first times a call at a small batch b.
    (Scaling batch 1 linearly would wildly overestimate the broadcasting engines.)"""
    known = sorted(p for p in points if p[0] < batch)
    if len(known) == 1 and (small := min(batch // 2, max(8, 2 * known[0][0]))) > known[0][0]:
        points.append((small, probe(small)))
        known.append(points[-1])
    if len(known) < 2:
        return None
    (b1, t1), (b2, t2) = known[-2:]
    return t2 + max(t2 - t1, 0.0) / (b2 - b1) * (batch - b2), f"affine in batch from {b1} and {b2}, n={n}"


def _skip_reason(cfg: BenchConfig, engine: str, n: int, batch: int, done: list[dict], points: list,
                 probe) -> str | None:
    """Why (engine, n, batch) is not run, or None. Of the two time estimates the smaller one counts: either
    alone can be far too pessimistic on a noisy machine, and a wrong skip would cascade through the grid."""
    if engine == "lightning.qubit" and (n > LIGHTNING_MAX_N or batch > LIGHTNING_MAX_BATCH):
        return (f"lightning.qubit is capped at n <= {LIGHTNING_MAX_N} and batch <= {LIGHTNING_MAX_BATCH} "
                "(adjoint with 2^n projector read-outs, one circuit per sample)")
    if engine == "fused":  # the reference every ratio needs: never skipped (and cheap by design)
        return None
    seconds, mib, how = _scaled(engine, n, batch, done) or (None, 0.0, "")
    if mib > cfg.mem_budget_mib:
        return f"estimated {mib:.0f} MiB peak > memory budget {cfg.mem_budget_mib:.0f} MiB ({how})"
    if seconds is None or seconds > cfg.budget_s:
        affine = _affine(n, batch, points, probe)
        if affine and (seconds is None or affine[0] < seconds):
            seconds, how = affine
    if seconds is not None and seconds > cfg.budget_s:
        return f"estimated {seconds:.1f} s per fwd+bwd > budget {cfg.budget_s:g} s ({how})"
    return None


def _probe(cfg: BenchConfig, engine: str, n: int):
    def probe(batch: int) -> float:
        step = make_step(engine, n, cfg.context, cfg.layers, batch, cfg.torch_device)
        step()  # the first call pays for tracing
        return _timed(step, 1)

    return probe


def bench_cell(cfg: BenchConfig, n: int, batch: int, done: list[dict], points: dict,
               memory: "MemoryProbe") -> list[dict]:
    """Every engine at (n, batch), timed in alternating rounds; then each one's memory in a fresh process.
    `points[(engine, n)]` collects (batch, seconds per call) for the estimates."""
    rows = {e: {"engine": e, "n": n, "batch": batch, "status": "ok", "reason": None,
                "device": "cpu" if e == "lightning.qubit" else cfg.torch_device} for e in ENGINES}
    steps, calls, times = {}, {}, {}
    for engine in ENGINES:
        reason = _skip_reason(cfg, engine, n, batch, done, points.setdefault((engine, n), []), _probe(cfg, engine, n))
        if reason:
            rows[engine].update(status="skipped", reason=reason)
            continue
        step = make_step(engine, n, cfg.context, cfg.layers, batch, cfg.torch_device)
        first = _timed(step, 1)  # warm-up: tracing, allocations, kernel selection
        times[engine], calls[engine] = [], 1
        if first > cfg.budget_s:
            times[engine] = [first]
            rows[engine]["reason"] = f"one call took {first:.1f} s > budget {cfg.budget_s:g} s: timed once"
        else:
            steps[engine] = step
            calls[engine] = max(1, min(100, math.ceil(cfg.min_block_s / max(first, 1e-6))))
    for r in range(cfg.repeats):  # interleaved: every round times every engine, the order rotating
        order = list(steps)[r % max(len(steps), 1):] + list(steps)[: r % max(len(steps), 1)]
        for engine in order:
            times[engine].append(_timed(steps[engine], calls[engine]))
    del steps
    gc.collect()
    fused = times.get("fused", [])
    for engine, ts in times.items():
        med = statistics.median(ts)
        if len(ts) == len(fused):  # side by side: the ratio within each round, then its median
            ratio = statistics.median(t / f for t, f in zip(ts, fused))
        else:
            ratio = med / statistics.median(fused) if fused else None
        rows[engine].update(ms=med * 1e3, ms_min=min(ts) * 1e3, ms_max=max(ts) * 1e3, samples_per_s=batch / med,
                            time_vs_fused=ratio, repeats=len(ts), calls_per_repeat=calls[engine])
        points[(engine, n)].append((batch, med))
        if rows[engine]["reason"] is None:
            rows[engine].update(memory.measure(engine, n, batch, cfg))
        else:
            rows[engine].update(peak_extra_mib=None, memory_note="not measured: over the time budget")
    return list(rows.values())


def bench_engines(cfg: BenchConfig, log: Callable[[str], None]) -> list[dict]:
    cells: list[dict] = []
    points: dict = {}
    memory = MemoryProbe()
    for n in cfg.n_qubits:
        for batch in cfg.batches:
            rows = bench_cell(cfg, n, batch, cells, points, memory)
            cells += rows
            log(f"n={n} batch={batch}: " + ", ".join(
                f"{r['engine']} {r['ms']:.1f} ms" if r.get("ms") else f"{r['engine']} {r['status']}" for r in rows))
    return cells


def ratios(cells: list[dict]) -> dict:
    out: dict = {"definition": "engine time / fused time per fwd+bwd: median over rounds in which the engines "
                               "alternate (> 1: fused is faster)"}
    for engine in ENGINES[1:]:
        out[engine] = [{"n": c["n"], "batch": c["batch"], "time_vs_fused": c["time_vs_fused"]}
                       for c in cells if c["engine"] == engine and c.get("time_vs_fused")]
    return out


SECTIONS = ("engines", "training", "teacher", "serving", "dvc")


def run_bench(params: Params, paths: Paths, quick: bool = False, teacher: bool = True, torch_device: str = "cpu",
              output: Path | None = None, plot: Path | None = None, log_mlflow: bool = True,
              log: Callable[[str], None] = lambda message: None, serve: bool = True, dvc: bool = False,
              only: tuple[str, ...] = (), n_qubits: tuple[int, ...] = (), batches: tuple[int, ...] = ()) -> dict:
    """Every section (or `only` those, updating them in an existing `output`); writes `output` (default
    metrics/bench.json) atomically and the samples/s plot. `sections` records when and at which commit
    each section was measured."""
    from qelm_core import tracking

    cfg = bench_config(params, quick, check_torch_device(torch_device))
    cfg = replace(cfg, n_qubits=tuple(n_qubits) or cfg.n_qubits, batches=tuple(batches) or cfg.batches)
    output, plot = Path(output or paths.metrics / "bench.json"), Path(plot or paths.plots / "bench_samples_per_s.png")
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        raise QelmError(f"bench --only: unknown section {unknown[0]!r}; valid: {', '.join(SECTIONS)}")
    if log_mlflow:
        tracking.configure(paths)  # an unreachable tracking server fails now, not after the benchmark
    stamp = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "git_commit": tracking.git_commit(paths)}
    result: dict = {"schema": SCHEMA, **stamp, "host": _host(cfg), "quick": quick,
                    "config": {**asdict(cfg), "engines": list(ENGINES), "loss": "NLL of random targets, "
                               "gradients to weights and input angles"}, "sections": {}}
    if only:
        try:
            earlier = json.loads(output.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise QelmError(f"bench --only needs an earlier full run in {output} ({err}); run `qelm bench`") from None
        earlier.setdefault("sections", {name: {k: earlier.get(k) for k in ("created", "git_commit")} for name in SECTIONS})
        result = {**earlier, **{k: result[k] for k in ("created", "host")}}
        if result.get("schema") != SCHEMA or result.get("quick") != quick:
            raise QelmError(f"{output}: not a {'quick ' if quick else ''}{SCHEMA} result; run `qelm bench` first")
    todo = set(only or SECTIONS)
    clock = time.perf_counter()
    if "engines" in todo:
        result["cells"] = bench_engines(cfg, log)
        result["ratios"] = ratios(result["cells"])
    if "training" in todo:
        log("training: a short distill.train of params.yaml's student")
        result["training"] = bench_training(params, paths, cfg)
    if "teacher" in todo:
        log("teacher: loading the model, then pipeline vs bare forward" if teacher else "teacher: skipped")
        result["teacher"] = (bench_teacher(params, paths, cfg, repeats=2 if quick else 3) if teacher
                             else {"status": "skipped", "reason": "--no-teacher"})
    if "serving" in todo:
        log("serving: mlflow models serve of the champion under a bounded load" if serve else "serving: skipped")
        result["serving"] = (bench_serving(params, paths, requests=200 if quick else 2000, clients=8) if serve
                             else {"status": "skipped", "reason": "--no-serve"})
    if "dvc" in todo:
        log("dvc: cold + no-op dvc repro in a fresh clone (minutes)" if dvc else "dvc: skipped (--dvc runs it)")
        result["dvc"] = bench_dvc_repro(paths) if dvc else {"status": "skipped", "reason": "off by default: --dvc"}
    result["sections"] = {**result.get("sections", {}), **{name: stamp for name in todo}}
    result["elapsed_s"] = time.perf_counter() - clock
    result["plot"] = str(samples_plot(plot, result["cells"]))
    result["mlflow_run_id"] = None
    atomic_write_json(output, result)
    if log_mlflow:
        params_ = {k: str(v) for k, v in {**result["config"], "quick": quick, **result["host"],
                                          "sections": ",".join(sorted(todo))}.items()}
        tags = {"qelm.bench.quick": str(quick), "qelm.bench.torch_device": cfg.torch_device}
        result["mlflow_run_id"] = tracking.log_bench(paths, params_, flat_metrics(result), [output, plot], tags)
        atomic_write_json(output, result)
    return result


def flat_metrics(result: dict) -> dict[str, float]:
    """MLflow metrics: {ms,samples_per_s,time_vs_fused,peak_mib}/<engine>/n<n>/b<batch>, teacher_*, train_*,
    serve_*, dvc_* (numbers only)."""
    out: dict[str, float] = {}
    for c in result["cells"]:
        for key, name in (("ms", "ms"), ("samples_per_s", "samples_per_s"), ("time_vs_fused", "time_vs_fused"),
                          ("peak_extra_mib", "peak_mib")):
            if c.get(key) is not None:
                out[f"{name}/{c['engine']}/n{c['n']}/b{c['batch']}"] = c[key]
    for section, prefix in (("teacher", "teacher_"), ("training", "train_"), ("serving", "serve_"), ("dvc", "dvc_")):
        out.update({prefix + k: v for k, v in result[section].items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return out


def _host(cfg: BenchConfig) -> dict:
    from importlib.metadata import version

    host = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "pennylane": version("pennylane"), "torch_threads": torch.get_num_threads()}
    if cfg.torch_device.startswith("cuda"):
        host["cuda_device"] = torch.cuda.get_device_name(torch.device(cfg.torch_device))
    return host
