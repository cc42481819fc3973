"""`qelm bench` sections `engines` (one fwd+bwd of each circuit engine per (n, batch), side by side, see the
package docstring for the method and the JSON; memory is measured by bench/memory.py, handed in) and
`tied` (the tied read-out's training step, overlaps in float32 vs bfloat16)."""
from __future__ import annotations

import gc
import math
import statistics
from typing import Callable

import torch
import torch.nn.functional as F

from qelm_core.bench.config import BenchConfig, interleaved_rounds, timed
from qelm_core.quantum.circuits import ansatz, build_qnode
from qelm_core.config import DeviceParams, StudentParams
from qelm_core.quantum.devices import diff_method_for, make_device
from qelm_core.quantum.fused import compile_fused

ENGINES = ("fused", "default.qubit", "lightning.qubit")
LIGHTNING_MAX_N, LIGHTNING_MAX_BATCH = 10, 256


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
        return timed(step, 1)

    return probe


def bench_cell(cfg: BenchConfig, n: int, batch: int, done: list[dict], points: dict, memory) -> list[dict]:
    """Every engine at (n, batch), timed in alternating rounds; then each one's memory in a fresh process
    (`memory.measure(engine, n, batch, cfg)`, bench/memory.py's MemoryProbe). `points[(engine, n)]`
    collects (batch, seconds per call) for the estimates."""
    rows = {e: {"engine": e, "n": n, "batch": batch, "status": "ok", "reason": None,
                "device": "cpu" if e == "lightning.qubit" else cfg.torch_device} for e in ENGINES}
    steps, calls, times = {}, {}, {}
    for engine in ENGINES:
        reason = _skip_reason(cfg, engine, n, batch, done, points.setdefault((engine, n), []), _probe(cfg, engine, n))
        if reason:
            rows[engine].update(status="skipped", reason=reason)
            continue
        step = make_step(engine, n, cfg.context, cfg.layers, batch, cfg.torch_device)
        first = timed(step, 1)  # warm-up: tracing, allocations, kernel selection
        times[engine], calls[engine] = [], 1
        if first > cfg.budget_s:
            times[engine] = [first]
            rows[engine]["reason"] = f"one call took {first:.1f} s > budget {cfg.budget_s:g} s: timed once"
        else:
            steps[engine] = step
            calls[engine] = max(1, min(100, math.ceil(cfg.min_block_s / max(first, 1e-6))))
    for engine, ts in interleaved_rounds(steps, calls, cfg.repeats).items():
        times[engine] += ts
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


def bench_engines(cfg: BenchConfig, log: Callable[[str], None], memory) -> list[dict]:
    cells: list[dict] = []
    points: dict = {}
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


def bench_tied(student: StudentParams, cfg: BenchConfig) -> dict:
    """The tied read-out's training step (fwd+bwd of the student's NLL, fused engine) with its overlaps in
    bfloat16 vs float32 (forced either way; a training step takes bfloat16 where `native_bfloat16` says so),
    in alternating rounds, at each n of the grid and the largest batch; `float32_vs_bfloat16` is the median
    ratio over rounds (> 1: bfloat16 is faster). `native_bfloat16` records what this machine's training uses."""
    from qelm_core.lm.student import QuantumStudent, native_bfloat16

    batch, rows = max(cfg.batches), []
    for n in cfg.n_qubits:
        sp = student.model_copy(update={"n_qubits": n, "readout": "tied", "engine": "fused", "encoding": "embedding"})
        model = QuantumStudent(sp, generator=torch.Generator().manual_seed(n)).to(cfg.torch_device).train()
        g = torch.Generator().manual_seed(n)
        ids = torch.randint(0, 2**n, (batch, sp.context), generator=g).to(cfg.torch_device)
        targets = torch.randint(0, 2**n, (batch,), generator=g).to(cfg.torch_device)

        def step(mode: str) -> Callable[[], None]:
            def run() -> None:
                model.train_overlaps = mode  # forced: the student picks bfloat16 only where it is native
                model.zero_grad()
                F.nll_loss(model(ids), targets).backward()
            return run

        steps = {dtype: step(dtype) for dtype in ("float32", "bfloat16")}
        calls = max(1, min(100, math.ceil(cfg.min_block_s / max(timed(steps["float32"], 1), 1e-6))))
        timed(steps["bfloat16"], 1)  # warm-up
        times = interleaved_rounds(steps, {dtype: calls for dtype in steps}, cfg.repeats)
        rows.append({"n": n, "batch": batch, **{f"ms_{d}": statistics.median(t) * 1e3 for d, t in times.items()},
                     "float32_vs_bfloat16": statistics.median(a / b for a, b in zip(times["float32"], times["bfloat16"])),
                     "repeats": cfg.repeats, "calls_per_repeat": calls,
                     "native_bfloat16": native_bfloat16(cfg.torch_device)})
    return {"rows": rows, "definition": "tied read-out training step (fwd+bwd), overlaps in float32 / bfloat16 "
                                        "time, median over alternating rounds (> 1: bfloat16 is faster)"}
