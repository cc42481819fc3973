"""Prefect orchestration (flows/): stage order from dvc.yaml, overrides, fail-fast, caching, Dask shards,
and a served deployment triggered through a real `prefect server`.

The fast tests run the real flow under `prefect_test_harness` with the stage functions replaced by
fakes that write the declared outputs (no model, no MLflow); the slow ones run the real stages.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from qelm_core.serving import free_port
from tests.conftest import REPO, TINY_PARAMS, make_pipeline_repo, write_params

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
DVC_STAGES = list(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])


@pytest.fixture(scope="session")
def harness(tmp_path_factory):
    """A throwaway Prefect API + database for the session, with its own result storage (cache records)."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    storage = tmp_path_factory.mktemp("prefect-results")
    with temporary_settings({PREFECT_LOCAL_STORAGE_PATH: storage}), prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(autouse=True)
def mlflow_globals(monkeypatch):
    """No MLflow URI leaks in or out: mlflow.set_tracking_uri() also writes os.environ, process-wide."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    yield
    if "mlflow" in sys.modules:
        import mlflow

        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


# ------------------------------------------------------------------ fast: fake stages


def _declared_outs(name: str) -> list[str]:
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"][name]
    return [e if isinstance(e, str) else next(iter(e)) for k in ("outs", "metrics", "plots") for e in stage.get(k, [])]


FAKE_METRICS = {  # what the sweep report reads from train / evaluate; the quantum student improves with layers
    "train": lambda p: {"student_params_total": 40 * p.student.layers, "classical_params_total": 85,
                        "student_val_ppl": 5.0 - 0.5 * p.student.layers + 0.1 * p.seed, "classical_val_ppl": 4.0},
    "evaluate": lambda p: {"ppl_quantum": 5.1 - 0.5 * p.student.layers + 0.1 * p.seed, "ppl_classical": 4.1,
                           "ppl_unigram": 4.5, "ppl_bigram": 3.5, "ppl_teacher": 2.5},
}


class Calls(list):
    """(stage, params, root) per fake stage call; `spans` = (root, start, end); `delay` holds each call."""

    def __init__(self):
        super().__init__()
        self.spans, self.delay, self.entered = [], 0.0, threading.Event()


@pytest.fixture
def fake_stages(monkeypatch):
    """Replace every stage's run() by a recorder writing its declared outputs (content = its params)."""
    import importlib

    calls = Calls()

    def fake(name):
        def run(params, paths):
            start = time.monotonic()
            calls.entered.set()
            text = json.dumps({"stage": name, "params": params.model_dump(mode="json")}, sort_keys=True)
            for out in _declared_outs(name):
                target = paths.root / out
                if Path(out).suffix:  # a file
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(text)
                else:
                    target.mkdir(parents=True, exist_ok=True)
                    (target / "out.txt").write_text(text)
            time.sleep(calls.delay)
            calls.spans.append((paths.root, start, time.monotonic()))
            calls.append((name, params, paths.root))
            return {"stage": name, "mlflow_run_id": None, **FAKE_METRICS.get(name, lambda p: {})(params)}
        return run

    for name in DVC_STAGES:
        monkeypatch.setattr(importlib.import_module(f"qelm_core.stages.{name}"), "run", fake(name))
    monkeypatch.setattr("qelm_core.stages.teacher.pending_shards", lambda params, paths: [])
    return calls


@pytest.fixture
def project(tmp_path) -> Path:
    """dvc.yaml + params.yaml + a small corpus: all the flow reads from a project (code deps: the package)."""
    shutil.copy(REPO / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "macbeth.txt").write_text("When shall we three meet again\n" * 20)
    write_params(tmp_path, TINY_PARAMS)
    return tmp_path


def stage_task_runs(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    runs = [r for r in runs if "qelm-stage" in r.tags]
    return [r.name for r in sorted(runs, key=lambda r: r.start_time or r.expected_start_time)]


def test_task_order_is_the_dvc_yaml_stage_order(harness, fake_stages, project):
    from flows.pipeline import pipeline

    state = pipeline(project_root=str(project), return_state=True)
    assert state.is_completed(), state.message
    assert stage_task_runs(state.state_details.flow_run_id) == DVC_STAGES
    assert [name for name, _, _ in fake_stages] == DVC_STAGES
    roots = [root for _, _, root in fake_stages]
    assert len(set(roots)) == len(roots) and all(r.parent == project / ".qelm" / "work" for r in roots)


def test_overrides_reach_the_stages_and_unchanged_work_is_reused(harness, fake_stages, project):
    from flows.params import Overrides
    from flows.pipeline import pipeline

    first = Overrides(layers=3, alpha=0.25, extra={"evaluate.shots": 123})
    pipeline(overrides=first, project_root=str(project))
    seen = {name: (params, root) for name, params, root in fake_stages}
    assert seen["train"][0].student.layers == 3 and seen["train"][0].train.alpha == 0.25
    assert seen["evaluate"][0].evaluate.shots == 123
    assert seen["prepare"][0].student.n_qubits == TINY_PARAMS["student"]["n_qubits"]
    assert Path(seen["prepare"][0].data.corpus) == project / "corpus"  # anchored: stages run elsewhere

    fake_stages.clear()  # same inputs again: every stage is Cached, nothing runs
    state = pipeline(overrides=first, project_root=str(project), return_state=True)
    assert state.is_completed() and fake_stages == []

    second = Overrides(layers=2, alpha=0.25, extra={"evaluate.shots": 123})  # only train's inputs differ
    pipeline(overrides=second, project_root=str(project))
    assert [name for name, _, _ in fake_stages] == ["train", "evaluate", "register"]
    new_train = next(root for name, _, root in fake_stages if name == "train")
    assert new_train != seen["train"][1]  # its own folder: the first run's outputs are untouched
    assert json.loads((seen["train"][1] / "metrics" / "train.json").read_text())["params"]["student"]["layers"] == 3

    shutil.rmtree(seen["evaluate"][1])  # lost outputs are recomputed, not served from the cache record
    fake_stages.clear()
    pipeline(overrides=first, project_root=str(project))
    assert [name for name, _, _ in fake_stages] == ["evaluate"]


def test_concurrent_runs_never_share_a_folder_at_once(harness, fake_stages, project):
    """Two runs with the same overrides and one with others, at once: a stage folder is written by one
    stage call at a time (the same key waits on its lock), and other params get other folders."""
    from flows.params import Overrides
    from flows.pipeline import pipeline

    fake_stages.delay = 0.3
    results = {}

    def run(name, overrides):
        results[name] = pipeline(overrides=overrides, project_root=str(project))

    threads = [threading.Thread(target=run, args=("a", Overrides(layers=3)))]
    threads[0].start()
    assert fake_stages.entered.wait(120)  # the first run holds prepare's lock: the others must wait for it
    threads += [threading.Thread(target=run, args=("b", Overrides(layers=3))),
                threading.Thread(target=run, args=("c", Overrides(layers=2)))]
    for t in threads[1:]:
        t.start()
    for t in threads:
        t.join(300)
    assert set(results) == {"a", "b", "c"}
    assert results["a"]["folders"] == results["b"]["folders"]
    assert results["a"]["folders"]["teacher"] == results["c"]["folders"]["teacher"]
    assert results["a"]["folders"]["train"] != results["c"]["folders"]["train"]
    assert [name for name, _, _ in fake_stages].count("prepare") == 1  # b and c reused a's
    by_root: dict = {}
    for root, start, end in fake_stages.spans:
        by_root.setdefault(root, []).append((start, end))
    for root, spans in by_root.items():
        spans.sort()
        assert all(later[0] >= earlier[1] for earlier, later in zip(spans, spans[1:])), f"{root} written twice at once"


def test_a_lock_left_by_a_dead_process_is_broken(tmp_path):
    from flows.tasks import StageLocks

    locks = StageLocks(tmp_path)
    assert locks.acquire_lock("k1", holder="me") and locks.is_locked("k1")  # held by this (live) process
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "k2.lock").write_text(json.dumps({"holder": "x", "expiration": None, "pid": dead.pid,
                                                  "host": socket.gethostname()}))
    assert not StageLocks(tmp_path).is_locked("k2") and not (tmp_path / "k2.lock").exists()
    (tmp_path / "k3.lock").write_text(json.dumps({"holder": "x", "expiration": None, "pid": dead.pid,
                                                  "host": "another-host"}))
    assert StageLocks(tmp_path).is_locked("k3")


def test_invalid_override_fails_the_run_before_any_stage(harness, fake_stages, project):
    from flows.params import Overrides
    from flows.pipeline import pipeline

    state = pipeline(overrides=Overrides(n_qubits=99), project_root=str(project), return_state=True)
    assert state.is_failed()
    assert "override rejected" in state.message and "student.n_qubits" in state.message
    assert fake_stages == [] and stage_task_runs(state.state_details.flow_run_id) == []

    state = pipeline(overrides=Overrides(extra={"train.stepz": 5}), project_root=str(project), return_state=True)
    assert state.is_failed() and "train.stepz" in state.message and fake_stages == []


def test_sweep_shares_upstream_work_compares_and_registers_the_best(harness, fake_stages, project, monkeypatch):
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.params import SweepGrid
    from flows.sweep import sweep

    monkeypatch.setattr("flows.sweep.dask_runner", lambda *args: ThreadPoolTaskRunner(max_workers=2))  # fakes: in-process
    out = sweep(grid=SweepGrid(layers=[1, 2], alpha=[0.5], seeds=[0, 1, 2], steps=5), project_root=str(project))
    names = [name for name, _, _ in fake_stages]
    assert (names.count("prepare"), names.count("teacher"), names.count("train"), names.count("evaluate"),
            names.count("register")) == (1, 1, 6, 6, 1)
    assert {p.train.steps for name, p, _ in fake_stages if name == "train"} == {5}
    assert out["best"] == "q4-l2-a0.5-s0"
    registered = next(p for name, p, _ in fake_stages if name == "register")
    assert (registered.student.layers, registered.seed) == (2, 0)
    folder = Path(out["folder"])
    assert (folder / "pareto.png").stat().st_size > 0
    summary = (folder / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 2 * 2  # header + (2 layer settings x quantum/classical), seeds averaged

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(out["mlflow_run_id"])
    assert run.data.tags["qelm.kind"] == "sweep" and run.data.tags["prefect.flow_run_id"]
    assert {"sweep/pareto.png", "sweep/summary.json"} <= {a.path for a in client.list_artifacts(run.info.run_id, "sweep")}


def test_retries_only_for_transient_failures():
    from prefect.states import Failed

    from flows.tasks import stage_retries, transient_only
    from qelm_core.config import ConfigError, Params
    from qelm_core.teacher import TeacherError

    assert not transient_only(None, None, Failed(data=ConfigError("bad input")))
    assert not transient_only(None, None, Failed(data=TeacherError("not a model")))
    assert not transient_only(None, None, Failed(data=ValueError("a bug")))
    assert transient_only(None, None, Failed(data=ConnectionError("reset by peer")))
    assert transient_only(None, None, Failed(data=MemoryError()))
    ibm = Params.model_validate({"device": {"name": "qiskit.remote", "backend": "ibm_brisbane", "shots": 100}})
    fake = Params.model_validate({"device": {"name": "qiskit.remote", "backend": "FakeManilaV2", "shots": 100}})
    assert stage_retries("train", ibm) > 0 and stage_retries("train", fake) == 0
    assert stage_retries("teacher", fake) > 0 and stage_retries("evaluate", ibm) == 0


# ------------------------------------------------------------------ slow: real stages


@pytest.mark.slow
def test_flow_hashes_are_dvcs_own(tiny_repo):
    from flows.workspace import dvc_md5

    lock = yaml.safe_load((tiny_repo / "dvc.lock").read_text())["stages"]
    outs = {o["path"]: o["md5"] for s in lock.values() for o in s.get("outs", [])}
    for path in ("data/prepared", "data/teacher", "models/student", "metrics/teacher.json"):
        assert dvc_md5(tiny_repo / path) == outs[path], path


@pytest.mark.slow
def test_sharded_teacher_on_two_dask_workers_is_byte_identical(harness, tiny_repo, tmp_path):
    """The flow's Dask path (shards mapped over a LocalCluster, then the stage merges) == `qelm teacher`."""
    from flows.pipeline import teacher_shards
    from flows.runner import dask_runner
    from qelm_core.config import Paths, load_params
    from qelm_core.stages import teacher

    params, paths = load_params(tiny_repo / "params.yaml"), Paths(tmp_path)
    shutil.copytree(tiny_repo / "data" / "prepared", paths.prepared)
    jobs = teacher.pending_shards(params, paths)
    assert len(jobs) >= 4
    state = teacher_shards.with_options(task_runner=dask_runner(n_workers=2))(params, tmp_path, jobs,
                                                                             return_state=True)
    assert state.is_completed(), state.message
    assert teacher.pending_shards(params, paths) == []  # the stage will only merge
    teacher.run(params, paths)
    single = sorted((tiny_repo / "data" / "teacher").iterdir())
    assert [p.name for p in single] == sorted(p.name for p in paths.teacher.iterdir())
    for path in single:
        assert (paths.teacher / path.name).read_bytes() == path.read_bytes(), path.name


def _stop(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM the process group we started, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1", **extra)
    return env


@pytest.fixture
def prefect_server(tmp_path):
    """`prefect server start` on a free port with its own database; always stopped."""
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                            env=_env(PREFECT_HOME=str(tmp_path / "server-home"), PREFECT_UI_ENABLED="false"),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}/api"
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise AssertionError(f"prefect server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
                time.sleep(1)
        yield url
    finally:
        _stop(proc)
        log.close()


@pytest.mark.slow
def test_served_deployment_runs_through_the_api_and_tags_mlflow(prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    repo = make_pipeline_repo(tmp_path / "repo", TINY_PARAMS)
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen([sys.executable, "-m", "flows.serve"], cwd=repo, stdout=log, stderr=subprocess.STDOUT,
                             env=_env(PREFECT_API_URL=prefect_server, PREFECT_HOME=str(tmp_path / "serve-home"),
                                      QELM_ROOT=str(repo)), start_new_session=True)
    try:
        with temporary_settings({PREFECT_API_URL: prefect_server}):
            deadline = time.time() + 120
            while True:  # the deployment appears once `serve` has registered it
                with get_client(sync_client=True) as client:
                    names = [d.name for d in client.read_deployments()]
                if "default" in names:
                    break
                assert serve.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(1)
            flow_run = run_deployment("qelm-pipeline/default", timeout=900, poll_interval=3, parameters={
                "overrides": {"layers": 1, "steps": 12}, "dask_workers": 1})
        assert flow_run.state.is_completed(), f"{flow_run.state}\n{(tmp_path / 'serve.log').read_text()[-4000:]}"
    finally:
        _stop(serve)
        log.close()

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("qelm").experiment_id],
                              filter_string=f"tags.`prefect.flow_run_id` = '{flow_run.id}'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["student.layers"] == "1" and run.data.params["train.steps"] == "12"
    assert "ppl_quantum" in run.data.metrics and run.data.tags["qelm.stage"] == "register"
    assert run.data.tags["prefect.last_flow_run_id"] == str(flow_run.id)
    assert not (repo / "data" / "teacher").exists()  # the flow works in .qelm/, never in DVC's workspace
