"""`qelm bench`: every section in the JSON, skips recorded with a reason, the plot and the MLflow run."""
import ast
import json

import pytest
import torch
from typer.testing import CliRunner

from qelm_core.bench.config import BenchConfig, check_torch_device
from qelm_core.bench.engines import ENGINES, _skip_reason
from qelm_core.cli import app
from qelm_core.config import QelmError
from tests.conftest import REPO

QUICK_N, QUICK_BATCH = (4, 6), (1, 64)


def _bench(tmp_path, monkeypatch, *extra):
    monkeypatch.setenv("QELM_ROOT", str(tmp_path))  # mlflow.db, plots/ and data lookups in tmp, not the repo
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root is ./mlruns
    out, plot = tmp_path / "out" / "bench.json", tmp_path / "out" / "bench.png"
    result = CliRunner().invoke(app, ["bench", "--quick", "--output", str(out), "--plot", str(plot),
                                      "--params", str(REPO / "params.yaml"), *extra])
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text()), plot, result.output


def _check_cells(r):
    cells = {(c["engine"], c["n"], c["batch"]): c for c in r["cells"]}
    assert set(cells) == {(e, n, b) for e in ENGINES for n in QUICK_N for b in QUICK_BATCH}
    for c in cells.values():
        assert c["status"] in ("ok", "skipped")
        if c["status"] == "skipped":
            assert c["reason"] and c.get("ms") is None
        else:
            assert c["ms"] > 0 and c["samples_per_s"] == pytest.approx(c["batch"] / c["ms"] * 1e3)
            assert c["time_vs_fused"] > 0 and c["repeats"] >= 1 and "memory_note" in c
            if c["reason"] is None:  # not over the time budget (a loaded machine can make it so): memory measured
                assert c["peak_extra_mib"] >= 0 and c["memory_note"].startswith("peak RSS")
    for n in QUICK_N:
        for b in QUICK_BATCH:  # fused, the reference, is never skipped
            assert cells[("fused", n, b)]["time_vs_fused"] == 1.0
    # the first cell has nothing to extrapolate from: every engine is measured there (later cells may be
    # skipped on a loaded machine, with the reason: that is checked above)
    assert all(cells[(e, 4, 1)]["status"] == "ok" for e in ENGINES)
    for engine in ENGINES[1:]:
        assert {(x["n"], x["batch"]) for x in r["ratios"][engine]} == {
            (c["n"], c["batch"]) for c in r["cells"] if c["engine"] == engine and c["status"] == "ok"}
        assert {"n": 4, "batch": 1, "time_vs_fused": cells[(engine, 4, 1)]["time_vs_fused"]} in r["ratios"][engine]
    assert r["ratios"]["definition"]


def test_quick_bench_without_teacher_writes_every_section(tmp_path, monkeypatch):
    r, plot, output = _bench(tmp_path, monkeypatch, "--no-teacher")
    assert r["schema"] == "qelm-bench/1" and r["quick"] is True
    assert {"host", "config", "cells", "ratios", "training", "threads", "teacher", "plot", "mlflow_run_id"} <= set(r)
    _check_cells(r)
    assert r["teacher"] == {"status": "skipped", "reason": "--no-teacher"}
    assert r["serving"]["status"] == "skipped" and "no qelm-student@champion" in r["serving"]["reason"]
    assert r["dvc"] == {"status": "skipped", "reason": "off by default: --dvc"}
    t = r["training"]
    assert t["status"] == "ok" and t["tokens_per_s"] > 0 and t["steps"] == 3 and "synthetic" in t["data"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and r["plot"] == str(plot)
    assert "fwd+bwd per call" in output and "skipped: --no-teacher" in output
    assert set(r["threads"]["students"]) == {"student", "classical"} and "threads: student" in output
    assert [(row["n"], row["batch"]) for row in r["tied"]["rows"]] == [(n, max(QUICK_BATCH)) for n in QUICK_N]
    assert all(row["ms_float32"] > 0 and row["ms_bfloat16"] > 0 and row["float32_vs_bfloat16"] > 0
               for row in r["tied"]["rows"]) and "tied read-out n=6" in output

    import mlflow  # the run is in the bench experiment of the tmp store, with metrics and both artifacts

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = mlflow.get_run(r["mlflow_run_id"])
    assert mlflow.get_experiment(run.info.experiment_id).name == "qelm-bench"
    assert run.data.metrics["time_vs_fused/fused/n4/b1"] == 1.0 and "train_tokens_per_s" in run.data.metrics
    assert run.data.metrics["tied_float32_vs_bfloat16/n6/b64"] == r["tied"]["rows"][1]["float32_vs_bfloat16"]
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "bench")}
    assert names == {"bench/bench.json", "bench/bench.png"}

    # --only: one section re-measured in place, the others kept, each stamped with when it was measured
    again, _, _ = _bench(tmp_path, monkeypatch, "--no-teacher", "--no-mlflow", "--only", "training")
    assert again["cells"] == r["cells"] and again["teacher"] == r["teacher"]
    assert again["training"]["seconds"] != r["training"]["seconds"]
    assert set(again["sections"]) == {"engines", "tied", "training", "threads", "teacher", "serving", "dvc"}
    assert again["sections"]["training"]["created"] >= again["sections"]["engines"]["created"]


def test_bench_only_refuses_unknown_sections_and_a_missing_result(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for args, message in ((["--only", "gpu"], "unknown section 'gpu'"), (["--only", "serving"], "needs an earlier")):
        result = CliRunner().invoke(app, ["bench", "--quick", "--no-mlflow", "--output", str(tmp_path / "b.json"),
                                          "--params", str(REPO / "params.yaml"), *args])
        assert result.exit_code == 2 and message in result.output


def test_unavailable_cuda_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(QelmError, match="CUDA is not available") as err:
        check_torch_device("cuda")
    assert "\n" not in str(err.value)
    with pytest.raises(QelmError, match="use cpu or cuda"):
        check_torch_device("tpu")
    result = CliRunner().invoke(app, ["bench", "--quick", "--torch-device", "cuda", "--params",
                                      str(REPO / "params.yaml")])
    assert result.exit_code == 2 and "CUDA is not available" in result.output


def _cfg(**kw):
    base = dict(n_qubits=(4,), batches=(1,), context=2, layers=1, repeats=1, budget_s=10.0, min_block_s=0.0,
                mem_budget_mib=1000.0, torch_device="cpu", teacher_windows=1, teacher_window=8, teacher_stride=8,
                teacher_batch=1, train_steps=1, train_val_positions=8)
    return BenchConfig(**{**base, **kw})


def test_skip_reasons_cap_lightning_and_extrapolate_time_and_memory():
    cfg, never = _cfg(), lambda batch: pytest.fail("no probe expected")
    assert "capped" in _skip_reason(cfg, "lightning.qubit", 12, 1, [], [], never)
    assert "capped" in _skip_reason(cfg, "lightning.qubit", 4, 1024, [], [], never)
    assert _skip_reason(cfg, "default.qubit", 4, 1, [], [], never) is None  # nothing to go on: run it
    done = [{"engine": "default.qubit", "n": 4, "batch": 64, "ms": 2000.0, "peak_extra_mib": 1.0}]
    assert _skip_reason(cfg, "default.qubit", 6, 64, done, [], never) == (
        "estimated 12.0 s per fwd+bwd > budget 10 s (x6.0 from n=4, batch=64)")  # 2 s x 2^2 x 6/4
    assert _skip_reason(cfg, "lightning.qubit", 6, 64, done, [], never) is None  # estimates are per engine
    big = [{"engine": "default.qubit", "n": 4, "batch": 64, "ms": 1.0, "peak_extra_mib": 200.0}]
    assert "MiB peak > memory budget 1000 MiB" in _skip_reason(cfg, "default.qubit", 6, 64, big, [], never)
    slow = [{"engine": "fused", "n": 4, "batch": 64, "ms": 1e6, "peak_extra_mib": 1e6}]
    assert _skip_reason(cfg, "fused", 6, 64, slow, [], never) is None  # the reference is always measured


def test_batch_estimates_are_affine_with_one_probe():
    cfg, asked = _cfg(), []

    def probe(batch):
        asked.append(batch)
        return 0.2

    points = [(1, 0.1)]  # batch 1 timed at this n: probe batch 8, then overhead + per-sample
    assert _skip_reason(cfg, "default.qubit", 4, 256, [], points, probe) is None  # 0.2 + 0.1/7 x 248 = 3.7 s
    assert asked == [8] and points == [(1, 0.1), (8, 0.2)]
    reason = _skip_reason(cfg, "default.qubit", 4, 1024, [], points, probe)  # 0.2 + 0.1/7 x 1016 = 14.7 s
    assert reason.startswith("estimated 14.7 s") and "affine in batch from 1 and 8" in reason and asked == [8]
    noisy = [{"engine": "default.qubit", "n": 4, "batch": 256, "ms": 5000.0, "peak_extra_mib": 1.0}]
    assert _skip_reason(cfg, "default.qubit", 8, 256, noisy, points, probe) is None  # 160 s scaled, 3.7 s affine


@pytest.mark.slow
def test_quick_bench_with_teacher(tmp_path, monkeypatch):
    r, _, output = _bench(tmp_path, monkeypatch, "--no-mlflow")
    _check_cells(r)
    t = r["teacher"]
    assert t["status"] == "ok" and t["windows"] == 4 and t["tokens"] > 0 and "synthetic" in t["data"]
    assert t["pipeline_tokens_per_s"] > 0 and t["bare_tokens_per_s"] > 0
    assert t["pipeline_vs_bare"] == pytest.approx(t["pipeline_vs_bare"]) and t["target"] == 0.9
    assert isinstance(t["meets_target"], bool) and r["mlflow_run_id"] is None
    assert "pipeline" in output and "tok/s" in output


def test_bench_grid_can_be_narrowed(tmp_path, monkeypatch):
    r, _, _ = _bench(tmp_path, monkeypatch, "--no-teacher", "--no-serve", "--no-mlflow", "--n", "4", "--batch", "1")
    assert {(c["engine"], c["n"], c["batch"]) for c in r["cells"]} == {(e, 4, 1) for e in ENGINES}
    assert r["config"]["n_qubits"] == [4] and r["config"]["batches"] == [1]


def test_threads_section_times_default_vs_policy_quiet_and_busy(monkeypatch):
    """The section's JSON on a tiny student (no timing thresholds: the figures depend on the machine)."""
    import os

    from qelm_core.bench.threads import bench_threads
    from qelm_core.config import parse_params

    monkeypatch.delenv("QELM_THREADS", raising=False)
    monkeypatch.setenv("QELM_CORES", "2")
    before = torch.get_num_threads()
    params = parse_params({"student": {"n_qubits": 3, "context": 2, "layers": 1}, "train": {"batch_size": 8}})
    r = bench_threads(params, _cfg(repeats=2))
    assert r["status"] == "ok" and r["cores_allotted"] == 2 and r["override"] is None and "busy-loop" in r["competitor"]
    assert r["cpus"] == len(os.sched_getaffinity(0)) and len(r["load_avg_1min"]) == 2 and r["definition"]
    assert set(r["students"]) == {"student", "classical"}
    for name, kind in (("student", "quantum"), ("classical", "classical")):
        s = r["students"][name]
        assert s["kind"] == kind and s["n_qubits"] == 3 and s["batch"] == 8 and s["work"] == 8 * 2**3
        assert s["policy_threads"] == 1 and s["default_threads"] == r["cpus"]  # tiny work: one thread
        assert s["repeats"] == 2 and s["calls_per_repeat"] >= 1
        for c in ("quiet", "busy"):
            assert s["default_vs_policy"][c] > 0
            for t in ("default", "policy"):
                assert s["ms"][c][t] > 0 and s["tokens_per_s"][c][t] == pytest.approx(8 / s["ms"][c][t] * 1e3)
        assert set(s["busy_vs_quiet"]) == {"default", "policy"}
    assert torch.get_num_threads() == before  # the section restores the thread count


BENCH_MODULES = ("config", "engines", "memory", "pipeline", "threads")


def _bench_imports(name: str) -> set[str]:
    """qelm_core.bench modules that bench/<name>.py imports (module level or inside functions)."""
    tree = ast.parse((REPO / "qelm_core" / "bench" / f"{name}.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("qelm_core.bench"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("qelm_core.bench")}
    return found


def test_bench_modules_import_one_way():
    """No import cycle: a section never imports the package (qelm_core.bench, which imports every section)
    and the sections' imports of each other, module level or in functions, form a DAG."""
    graph = {m: {i.removeprefix("qelm_core.bench.") for i in _bench_imports(m)} for m in BENCH_MODULES}
    assert all("qelm_core.bench" not in _bench_imports(m) for m in BENCH_MODULES), graph
    done: set[str] = set()
    while len(done) < len(graph):  # peel modules whose imports are all peeled; a cycle would stall this
        ready = {m for m, deps in graph.items() if m not in done and deps <= done}
        assert ready, f"import cycle among {sorted(set(graph) - done)}: {graph}"
        done |= ready
    assert graph["config"] == set() and graph["memory"] == {"config", "engines"}
