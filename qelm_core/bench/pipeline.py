"""`qelm bench`, second half: the pipeline's own throughput (teacher inference vs a bare transformers
forward of the same batches; training tokens/s of the default config), REST serving latency of the
registered champion under a bounded load, and (opt-in, long) a cold + no-op `dvc repro` of the
committed pipeline in a fresh clone. Engines: bench/engines.py.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
import numpy as np
import torch

from qelm_core import threads as policy
from qelm_core.bench.config import BenchConfig
from qelm_core.config import Params, Paths, QelmError

TEACHER_TARGET = 0.9  # pipeline tokens/s >= 0.9 x bare transformers forward
REPRO_TARGET_S, NOOP_TARGET_S = 600.0, 3.0  # default `dvc repro` on 2 cores; a no-op `dvc repro`


# ------------------------------------------------------------------ teacher: pipeline vs bare transformers


def _teacher_data(params: Params, paths: Paths, vocab_size_llm: int) -> tuple[np.ndarray, torch.Tensor, str]:
    from qelm_core.lm.data import load_prepared

    if (paths.prepared / "vocab.json").is_file():
        vocab, llm, _ = load_prepared(paths.prepared)
        return llm["test"], torch.tensor(vocab.llm_ids[1:], dtype=torch.long), "prepared test split (data/prepared)"
    ids = np.random.default_rng(params.seed).integers(0, vocab_size_llm, 20_000)
    return ids, torch.arange(1, params.vocab_size), "synthetic token ids (no data/prepared)"


def _window_batches(llm_ids: np.ndarray, windows, batch_size: int) -> list[torch.Tensor]:
    """The batches score_windows feeds the model: windows grouped by length, `batch_size` at a time."""
    groups: dict[int, list] = {}
    for w in windows:
        groups.setdefault(w[1] - w[0], []).append(w)
    return [torch.from_numpy(np.stack([llm_ids[s:e] for s, e, _ in ws[b: b + batch_size]]).astype(np.int64))
            for ws in groups.values() for b in range(0, len(ws), batch_size)]


@torch.inference_mode()
def _bare_forward(model, batches: list[torch.Tensor]) -> None:
    for x in batches:
        torch.softmax(model(input_ids=x).logits.float(), dim=-1)


def bench_teacher(params: Params, paths: Paths, cfg: BenchConfig, repeats: int) -> dict:
    from qelm_core.config import TeacherParams
    from qelm_core.llm import load_teacher, resolve_teacher
    from qelm_core.lm.teacher import plan_windows, score_windows

    torch_threads = policy.use(policy.LARGE)  # as the teacher stage runs
    source = resolve_teacher(params.teacher.model)
    start = time.perf_counter()
    model = load_teacher(source)
    load_s = time.perf_counter() - start
    llm_ids, vocab_llm_ids, data = _teacher_data(params, paths, model.config.vocab_size)
    tp = TeacherParams(window=cfg.teacher_window, stride=cfg.teacher_stride, batch_size=cfg.teacher_batch)
    windows = plan_windows(len(llm_ids), tp)[: cfg.teacher_windows]
    batches = _window_batches(llm_ids, windows, tp.batch_size)
    runs = {"pipeline": lambda: score_windows(model, llm_ids, windows, vocab_llm_ids, tp.batch_size),
            "bare": lambda: _bare_forward(model, batches)}
    score_windows(model, llm_ids, windows[:1], vocab_llm_ids, 1)  # warm-up, both paths
    _bare_forward(model, batches[:1])
    times: dict[str, list[float]] = {"pipeline": [], "bare": []}
    for r in range(repeats):  # alternating, the order swapped every round
        for name in (("pipeline", "bare") if r % 2 == 0 else ("bare", "pipeline")):
            start = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - start)
    tokens = sum(e - s for s, e, _ in windows)
    ratio = statistics.median(b / p for p, b in zip(times["pipeline"], times["bare"]))
    return {"status": "ok", "reason": None, "model": source.name, "data": data, "load_seconds": load_s,
            "torch_threads": torch_threads, "windows": len(windows), "window": tp.window, "stride": tp.stride,
            "batch_size": tp.batch_size, "tokens": tokens, "scored_targets": sum(e - f for _, e, f in windows),
            "repeats": repeats,
            "pipeline_tokens_per_s": tokens / statistics.median(times["pipeline"]),
            "bare_tokens_per_s": tokens / statistics.median(times["bare"]),
            "pipeline_vs_bare": ratio, "target": TEACHER_TARGET, "meets_target": bool(ratio >= TEACHER_TARGET),
            "definition": "input tokens/s; pipeline = teacher.score_windows (head on scored positions + "
                          "projection), bare = softmax(model(input_ids).logits) on the same batches; "
                          "pipeline_vs_bare = median over alternating rounds of bare time / pipeline time"}


# ------------------------------------------------------------------ training: a short distill.train


def _training_data(params: Params, paths: Paths) -> tuple[dict, np.ndarray, str]:
    from qelm_core.lm.data import contexts, load_prepared
    from qelm_core.lm.distill import SplitData, load_distill_data

    V, k = params.vocab_size, params.student.context
    vocab_ok = (paths.prepared / "vocab.json").is_file() and load_prepared(paths.prepared)[0].size == V
    if vocab_ok and (paths.teacher / "train.safetensors").is_file():
        data, vocab, _ = load_distill_data(paths, k)
        return data, np.asarray(vocab.counts), "prepared data + teacher targets (data/prepared, data/teacher)"
    if vocab_ok:
        vocab, _, ids = load_prepared(paths.prepared)
        streams, counts = ids, np.asarray(vocab.counts)
        source = "prepared ids (data/prepared) + synthetic teacher targets (no data/teacher)"
    else:
        rng = np.random.default_rng(params.seed)
        zipf = 1 / np.arange(1, V + 1)
        streams = {s: rng.choice(V, size=m, p=zipf / zipf.sum()) for s, m in (("train", 20_000), ("val", 4_000))}
        counts = np.bincount(streams["train"], minlength=V)
        source = "synthetic Zipf ids + synthetic teacher targets (no prepared data for this vocabulary)"
    out = {}
    for split in ("train", "val"):
        ids = streams[split]
        teacher = np.full((len(ids) - 1, V), 0.1 / V, dtype=np.float16)  # smoothed one-hot on the target
        teacher[np.arange(len(ids) - 1), ids[1:]] += 0.9
        out[split] = SplitData(torch.from_numpy(contexts(ids, k)), torch.from_numpy(ids[1:].astype(np.int64)),
                               torch.from_numpy(teacher))
    return out, counts, source


def bench_training(params: Params, paths: Paths, cfg: BenchConfig) -> dict:
    from qelm_core.lm.distill import SplitData, train
    from qelm_core.lm.student import build_student

    data, counts, source = _training_data(params, paths)
    val = data["val"]
    m = cfg.train_val_positions
    val = SplitData(val.contexts[:m], val.targets[:m], val.teacher[:m])
    steps = cfg.train_steps
    tp = params.train.model_copy(update={"steps": steps, "eval_every": steps, "checkpoint_every": steps,
                                         "patience": 0})
    model = build_student(params, torch.as_tensor(counts, dtype=torch.float64))
    torch_threads = policy.use(policy.student_work(params.student.n_qubits, tp.batch_size))  # as train_job
    with tempfile.TemporaryDirectory() as tmp:
        result = train(model, data["train"], val, tp, params.seed, Path(tmp) / "bench.safetensors", "bench")
    sp = params.student
    return {"status": "ok", "reason": None, "data": source, "kind": sp.kind, "engine": sp.engine,
            "n_qubits": sp.n_qubits, "context": sp.context, "layers": sp.layers, "device": params.device.name,
            "torch_device": params.device.torch_device, "torch_threads": torch_threads, "batch_size": tp.batch_size,
            "steps": result.steps, "seconds": result.seconds, "tokens_per_s": result.samples_per_s,
            "definition": "training target tokens/s of params.yaml's student, end to end: batches, loss, "
                          f"backward, Adam, one validation pass (<= {m} positions), checkpoint writes"}


# ------------------------------------------------------------------ serving: the champion under load


def bench_serving(params: Params, paths: Paths, requests: int, clients: int) -> dict:
    """<model_name>@champion served as `qelm serve-model` serves it; `requests` POSTs of one random context each from
    `clients` concurrent connections on 127.0.0.1 (figures, not assertions: errors are counted)."""
    from qelm_core import tracking
    from qelm_core.serving import context_ids_body, load_test, model_server, post

    name = params.registry.model_name
    uri = tracking.configure(paths)
    champion = tracking.alias_version(name, "champion")
    if champion is None:
        return {"status": "skipped", "reason": f"no {name}@champion in {uri}: run `dvc repro` (register) first"}
    rng, k = np.random.default_rng(params.seed), params.student.context
    with model_server(f"models:/{name}@champion", uri) as url:
        status, text = post(url, context_ids_body([[0] * k]))  # the champion's vocabulary size
        if status != 200:
            raise QelmError(f"bench: the champion refused a context of {k} ids ({status}): {text[:300]}")
        V = len(json.loads(text)["predictions"][0]["probs"])
        bodies = [context_ids_body(rng.integers(0, V, (1, k)).tolist()) for _ in range(64)]
        load_test(url, bodies, requests=50, clients=clients)  # warm-up: imports, first model call
        result = load_test(url, bodies, requests=requests, clients=clients)
    return {"status": "ok", "reason": None, "model": f"{name} v{champion.version} (champion)", **result,
            "definition": "latency of one POST /invocations (1 row of context_ids) per request, measured by "
                          "the client over keep-alive connections; MLflow's scoring server (qelm serve-model), "
                          "1 worker"}


# ------------------------------------------------------------------ dvc repro: cold and no-op, in a fresh clone


def _timed_run(cmd: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise QelmError(f"bench: `{' '.join(cmd)}` failed in {cwd}: {(proc.stderr or proc.stdout)[-600:]}")
    return time.perf_counter() - start


def bench_dvc_repro(paths: Paths, noop_repeats: int = 3) -> dict:
    """Clone the repo's HEAD into a temporary folder (no DVC cache, no MLflow store, no teacher shards),
    run every stage cold one after another (`dvc repro --force --single-item <stage>`, timed each), then
    a no-op `dvc repro` (median of `noop_repeats`). Uncommitted changes are not part of the clone."""
    import yaml

    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "QELM_ROOT")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    stages = list(yaml.safe_load((paths.root / "dvc.yaml").read_text())["stages"])
    tmp = Path(tempfile.mkdtemp(prefix="qelm-bench-repro-"))
    try:
        clone = tmp / "repo"
        _timed_run(["git", "clone", "-q", str(paths.root), str(clone)], tmp, env)
        stage_s = {s: _timed_run(["dvc", "repro", "--force", "--single-item", s], clone, env) for s in stages}
        noop = [_timed_run(["dvc", "repro"], clone, env) for _ in range(noop_repeats)]
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True, text=True).stdout
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total = sum(stage_s.values())
    return {"status": "ok", "reason": None, "commit": commit.strip(), "stage_seconds": stage_s,
            "full_repro_s": total, "noop_repro_s": statistics.median(noop), "noop_repeats": noop_repeats,
            "target_full_s": REPRO_TARGET_S, "target_noop_s": NOOP_TARGET_S,
            "meets_target_full": bool(total <= REPRO_TARGET_S),
            "meets_target_noop": bool(statistics.median(noop) <= NOOP_TARGET_S),
            "definition": "fresh git clone of HEAD with committed params.yaml; every stage forced in dvc.yaml "
                          "order, one `dvc repro -f -s` each (sum = full_repro_s); then `dvc repro` with "
                          "nothing changed"}
