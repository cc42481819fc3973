"""`qelm bench`: peak memory of one fwd+bwd, measured in a fresh process per (engine, n, batch)."""
from __future__ import annotations

import gc
import multiprocessing
import os

import torch

from qelm_core.bench.config import BenchConfig, proc_kib
from qelm_core.bench.engines import make_step


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


def memory_child(engine: str, n: int, context: int, layers: int, batch: int, torch_device: str) -> dict:
    """Runs in a fresh process: peak RSS growth of one fwd+bwd after a batch-1 call has loaded everything."""
    make_step(engine, n, context, layers, 1, torch_device)()
    step = make_step(engine, n, context, layers, batch, torch_device)
    gc.collect()
    exact = _reset_peak_rss()
    base = proc_kib("VmRSS")
    cuda = torch_device.startswith("cuda") and engine != "lightning.qubit"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
        cuda_base = torch.cuda.memory_allocated()
    step()
    out = {"peak_extra_mib": (proc_kib("VmHWM") - base) / 1024,
           "memory_note": "peak RSS - RSS before, one fwd+bwd, fresh process" if exact
           else "peak RSS could not be reset: includes set-up"}
    if cuda:
        out["peak_extra_mib_cuda"] = (torch.cuda.max_memory_allocated() - cuda_base) / 2**20
    return out


def _memory_entry(conn, *args) -> None:
    try:
        conn.send(memory_child(*args))
    finally:
        conn.close()


class MemoryProbe:
    """One process per measurement, forked from a forkserver that has imported torch and PennyLane (so
    a fork costs ~0.3 s, not an import). The process ends with its task: nothing idles or outlives us."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(["qelm_core.bench.memory", "pennylane", "pennylane_lightning.lightning_qubit"])

    def measure(self, engine: str, n: int, batch: int, cfg: BenchConfig) -> dict:
        if not os.path.exists("/proc/self/status"):
            return {"peak_extra_mib": None, "memory_note": "not measured: needs Linux /proc"}
        recv, send = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_memory_entry, daemon=True,
                                args=(send, engine, n, cfg.context, cfg.layers, batch, cfg.torch_device))
        proc.start()
        send.close()
        try:
            return recv.recv()
        except EOFError:  # no answer: killed (out of memory?) or crashed (its traceback is on stderr)
            proc.join()
            return {"peak_extra_mib": None, "memory_note": f"failed: the measuring process died "
                                                           f"(exit code {proc.exitcode})"}
        finally:
            proc.join()
            recv.close()

