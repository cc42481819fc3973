"""`qelm bench`: circuit engines, teacher inference and training throughput, measured side by side.

Engines (one fwd+bwd of an NLL loss over the 2^n probabilities, gradients to the weights AND the input
angles; the student's circuit `circuits.ansatz(n, context, layers)` with params' context/layers):
    fused            qelm_core/quantum/fused.py, complex64, on --torch-device
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
(steps, one validation pass and checkpoint writes included). Tied (bench/engines.py): the tied read-out's
training step with its overlaps in float32 vs bfloat16, alternating, per n of the grid. Threads (bench/threads.py): the student's
and its classical twin's training step with torch's default threads vs qelm's policy
(qelm_core/threads.py), quiet and with one competing busy-loop process, interleaved, as ratios.
Serving: the champion under a bounded REST load (`qelm serve-model`). Dvc: cold + no-op `dvc repro`.
Modules: config (BenchConfig), engines, memory, pipeline (teacher, training, serving, dvc), threads;
this one runs them and writes the JSON. Imports go one way (here -> sections -> config): no cycle.

bench.json: {"schema", "created", "git_commit", "host", "config", "cells": [one per engine x n x batch:
engine, n, batch, device, status ok|skipped, reason, ms, ms_min, ms_max, samples_per_s,
time_vs_fused, repeats, calls_per_repeat, peak_extra_mib, memory_note], "ratios": {engine: [{n, batch,
time_vs_fused}]}, "tied": {rows: [{n, batch, ms_float32, ms_bfloat16, float32_vs_bfloat16, repeats,
calls_per_repeat}], definition}, "teacher": {...}, "training": {...}, "threads": {status, reason, cpus, cores_allotted,
override, competitor, load_avg_1min: [before, after], students: {student|classical: {kind, n_qubits, batch,
work, default_threads, policy_threads, ms: {quiet|busy: {default, policy}}, tokens_per_s: (same shape),
default_vs_policy: {quiet, busy}, busy_vs_quiet: {default, policy}, repeats, calls_per_repeat}},
definition}, "serving": {...}, "dvc": {...}, "sections": {name: {created, git_commit}}, "elapsed_s", "plot",
"mlflow_run_id"}.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

from qelm_core import threads as policy  # not `threads`: bench.threads, the section, would shadow it
from qelm_core.bench.config import BenchConfig, bench_config, check_torch_device
from qelm_core.bench.engines import ENGINES, bench_engines, bench_tied, ratios
from qelm_core.bench.memory import MemoryProbe
from qelm_core.bench.pipeline import bench_dvc_repro, bench_serving, bench_teacher, bench_training
from qelm_core.bench.threads import bench_threads
from qelm_core.config import Params, Paths, QelmError
from qelm_core.io import atomic_write_json
from qelm_core.plots import samples_plot

SCHEMA = "qelm-bench/1"
__all__ = ["ENGINES", "SCHEMA", "SECTIONS", "BenchConfig", "check_torch_device", "run_bench"]


SECTIONS = ("engines", "tied", "training", "threads", "teacher", "serving", "dvc")


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
    if "engines" in todo:  # every allotted core, as before the thread policy: each engine at its quiet best
        result["config"]["engine_torch_threads"] = policy.use(policy.LARGE)
        result["cells"] = bench_engines(cfg, log, MemoryProbe())
        result["ratios"] = ratios(result["cells"])
    if "tied" in todo:
        log("tied: the tied read-out's training step, overlaps in float32 vs bfloat16")
        result["tied"] = bench_tied(params.student, cfg)
    if "training" in todo:
        log("training: a short distill.train of params.yaml's student")
        result["training"] = bench_training(params, paths, cfg)
    if "threads" in todo:
        log("threads: training steps, torch's default threads vs the policy, quiet and with a busy process")
        result["threads"] = bench_threads(params, cfg)
    if "teacher" in todo:
        log("teacher: loading the model, then pipeline vs bare forward" if teacher else "teacher: skipped")
        result["teacher"] = (bench_teacher(params, paths, cfg, repeats=2 if quick else 3) if teacher
                             else {"status": "skipped", "reason": "--no-teacher"})
    if "serving" in todo:
        log("serving: the champion (qelm serve-model) under a bounded load" if serve else "serving: skipped")
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
    tied_float32_vs_bfloat16/n<n>/b<batch>,
    serve_*, dvc_* (numbers only), threads_<student|classical>_<quiet|busy>_{default_vs_policy,default_ms,policy_ms}."""
    out: dict[str, float] = {}
    for c in result["cells"]:
        for key, name in (("ms", "ms"), ("samples_per_s", "samples_per_s"), ("time_vs_fused", "time_vs_fused"),
                          ("peak_extra_mib", "peak_mib")):
            if c.get(key) is not None:
                out[f"{name}/{c['engine']}/n{c['n']}/b{c['batch']}"] = c[key]
    for section, prefix in (("teacher", "teacher_"), ("training", "train_"), ("serving", "serve_"), ("dvc", "dvc_")):
        out.update({prefix + k: v for k, v in result.get(section, {}).items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)})
    for row in result.get("tied", {}).get("rows", []):
        out[f"tied_float32_vs_bfloat16/n{row['n']}/b{row['batch']}"] = row["float32_vs_bfloat16"]
    for name, s in result.get("threads", {}).get("students", {}).items():
        for c in ("quiet", "busy"):
            out[f"threads_{name}_{c}_default_vs_policy"] = s["default_vs_policy"][c]
            out.update({f"threads_{name}_{c}_{t}_ms": s["ms"][c][t] for t in ("default", "policy")})
    return out


def _host(cfg: BenchConfig) -> dict:
    from importlib.metadata import version

    host = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "pennylane": version("pennylane"), "torch_threads": torch.get_num_threads(),
            "cores_allotted": policy.cores(), "thread_override": policy.override()}
    if cfg.torch_device.startswith("cuda"):
        host["cuda_device"] = torch.cuda.get_device_name(torch.device(cfg.torch_device))
    return host
