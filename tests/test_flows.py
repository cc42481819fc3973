"""Prefect orchestration (flows/): stage order from dvc.yaml, overrides, fail-fast, DVC experiments and run-cache, Dask shards,
and a served deployment triggered through a real `prefect server`.

The fast tests run the real flows, DVC and git under `prefect_test_harness` on a toy project whose
stages (the real names, order, params and outputs) are a small script; the slow ones run the real stages.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from qelm_core.config import _merge
from tests.conftest import REPO, TINY_PARAMS, make_pipeline_repo, run, write_params

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


# ------------------------------------------------------------------ fast: a toy DVC project


def toy_dvc_yaml() -> dict:
    """The project's dvc.yaml with every command `python stage.py <stage>` and code deps -> stage.py."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    produced: set[str] = set()
    for name, stage in stages.items():
        stage["cmd"] = f"python stage.py {name}"
        stage["deps"] = ["stage.py", *[d for d in stage.get("deps", []) if d in produced]]
        produced |= {e if isinstance(e, str) else next(iter(e))
                     for k in ("outs", "metrics", "plots") for e in stage.get(k, [])}
    return {"stages": stages}


class Calls:
    """The toy stages' call records ($TOY_CALLS), read fresh each time."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self) -> list[dict]:
        return [json.loads(line) for line in self.path.read_text().splitlines()] if self.path.exists() else []

    def stages(self) -> list[str]:
        return [c["stage"] for c in self()]

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A git + DVC repo: the project's stages (names, order, params, outputs) run by tests/toy_stage.py."""
    root = tmp_path / "project"
    root.mkdir()
    (root / "dvc.yaml").write_text(yaml.safe_dump(toy_dvc_yaml(), sort_keys=False))
    shutil.copy(REPO / "tests" / "toy_stage.py", root / "stage.py")
    (root / "corpus").mkdir()
    (root / "corpus" / "macbeth.txt").write_text("When shall we three meet again\n" * 20)
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    write_params(root, _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY_PARAMS))
    for cmd in (["git", "init", "-q", "-b", "main"], ["dvc", "init", "-q"], ["dvc", "config", "core.analytics", "false"],
                ["git", "add", "-A"], ["git", "commit", "-q", "-m", "toy"]):
        run(cmd, root)
    monkeypatch.setenv("QELM_ROOT", str(root))
    monkeypatch.setenv("TOY_CALLS", str(tmp_path / "calls.jsonl"))
    monkeypatch.setattr("qelm_core.lm.stages.teacher.pending_shards", lambda params, paths: [])  # toy data: no shards
    return root


@pytest.fixture
def calls(project) -> Calls:
    return Calls(Path(os.environ["TOY_CALLS"]))


def stage_task_runs(flow_run_id) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    runs = [r for r in runs if "qelm-stage" in r.tags]
    return [r.name for r in sorted(runs, key=lambda r: r.start_time or r.expected_start_time)]


def dvc_experiments(project: Path) -> dict[str, dict]:
    """`dvc exp show --json` -> {experiment name: {"params": params.yaml, "metrics": {file: data}}}."""
    out = {}
    for baseline in json.loads(run(["dvc", "exp", "show", "--json"], project).stdout):
        for exp in baseline.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                out[rev["name"]] = {"params": data["params"]["params.yaml"]["data"],
                                    "metrics": {k: v["data"] for k, v in data["metrics"].items() if "data" in v}}
    return out


def test_task_order_is_the_dvc_yaml_stage_order_and_the_run_is_a_dvc_experiment(harness, project, calls):
    from flows.experiment import FOLDER
    from flows.pipeline import pipeline

    state = pipeline(return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert stage_task_runs(state.state_details.flow_run_id) == DVC_STAGES
    assert calls.stages() == DVC_STAGES and result["reused"] == []
    workspace = project / FOLDER / result["dvc_experiment"]
    assert {c["cwd"] for c in calls()} == {str(workspace)}  # never the project's own workspace
    assert not workspace.exists() and not (project / "data" / "prepared").exists()
    shown = dvc_experiments(project)
    assert shown[result["dvc_experiment"]]["metrics"]["metrics/eval.json"]["ppl_student"] == pytest.approx(
        result["metrics"]["ppl_student"])


def test_overrides_reach_the_stages_and_dvc_reuses_unchanged_work(harness, project, calls):
    from flows.params import Overrides
    from flows.pipeline import pipeline

    first = Overrides(layers=3, alpha=0.25, extra={"evaluate.shots": 123})
    a = pipeline(overrides=first)
    seen = {c["stage"]: c["params"] for c in calls()}
    assert seen["train"]["student"]["layers"] == 3 and seen["train"]["train"]["alpha"] == 0.25
    assert seen["evaluate"]["evaluate"]["shots"] == 123
    assert seen["prepare"]["student"]["n_qubits"] == TINY_PARAMS["student"]["n_qubits"]

    calls.clear()  # same params again: DVC restores every stage from its run-cache, nothing runs
    start = time.monotonic()
    again = pipeline(overrides=first)
    print(f"no-op flow run: {time.monotonic() - start:.1f} s")
    assert calls() == [] and again["reused"] == DVC_STAGES and again["metrics"] == a["metrics"]

    second = Overrides(layers=2, alpha=0.25, extra={"evaluate.shots": 123})  # only train's inputs differ
    b = pipeline(overrides=second)
    assert calls.stages() == ["train", "evaluate", "register"]
    assert b["reused"] == ["prepare", "teacher", "assign"]
    shown = dvc_experiments(project)
    assert shown[a["dvc_experiment"]]["params"]["student"]["layers"] == 3
    assert shown[b["dvc_experiment"]]["params"]["student"]["layers"] == 2
    assert shown[b["dvc_experiment"]]["metrics"]["metrics/eval.json"]["ppl_student"] == pytest.approx(4.1)

    run(["dvc", "exp", "apply", a["dvc_experiment"]], project)  # DVC's tool brings a flow run in
    assert yaml.safe_load((project / "params.yaml").read_text())["student"]["layers"] == 3
    model = json.loads((project / "models" / "student" / "out.json").read_text())
    assert model["params"]["student"]["layers"] == 3


def test_concurrent_runs_with_different_params_stay_separate(harness, project, calls, monkeypatch):
    """Three runs at once (two alike, one not): each writes only in its own workspace, and each
    experiment holds its own params' outputs."""
    from flows.params import Overrides
    from flows.pipeline import pipeline

    monkeypatch.setenv("TOY_DELAY", "0.3")
    results = {}

    def start(name, overrides):
        results[name] = pipeline(overrides=overrides)

    threads = [threading.Thread(target=start, args=(name, Overrides(layers=layers)))
               for name, layers in (("a", 3), ("b", 3), ("c", 2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert set(results) == {"a", "b", "c"}
    names = {k: r["dvc_experiment"] for k, r in results.items()}
    assert len(set(names.values())) == 3
    for call in calls():
        owner = Path(call["cwd"]).name
        assert owner in names.values(), call["cwd"]
        layers = {"a": 3, "b": 3, "c": 2}[next(k for k, v in names.items() if v == owner)]
        assert call["params"]["student"]["layers"] == layers
    shown = dvc_experiments(project)
    for key, layers in (("a", 3), ("b", 3), ("c", 2)):
        assert shown[names[key]]["params"]["student"]["layers"] == layers
        assert shown[names[key]]["metrics"]["metrics/eval.json"]["ppl_student"] == pytest.approx(5.1 - 0.5 * layers)


def test_invalid_override_fails_the_run_before_any_stage(harness, project, calls):
    from flows.params import Overrides
    from flows.pipeline import pipeline

    with pytest.raises(ValueError, match="n_qubits"):  # the form's range is the config's (le=20)
        Overrides(n_qubits=99)
    state = pipeline(overrides={"n_qubits": 99}, return_state=True)  # what an API caller can still send
    assert state.is_failed() and "n_qubits" in state.message and calls() == []

    state = pipeline(overrides=Overrides(extra={"teacher.stride": 10_000}), return_state=True)  # a cross-field rule
    assert state.is_failed()
    assert "override rejected" in state.message and "stride must be <= window" in state.message
    assert calls() == [] and stage_task_runs(state.state_details.flow_run_id) == []

    state = pipeline(overrides=Overrides(extra={"train.stepz": 5}), return_state=True)
    assert state.is_failed() and "train.stepz" in state.message and calls() == []


def test_the_cli_waits_for_a_slow_temporary_prefect_server(monkeypatch):
    """`qelm flow` without a Prefect server: Prefect's temporary server gets 2 min to answer (its default
    20 s ran out for two flow runs beside a CI run); a longer setting of the user's is kept; a bad value is
    one line naming the field, before any flow starts."""
    from typer.testing import CliRunner

    import flows.pipeline
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as timeout, temporary_settings
    from qelm_core.cli import app

    seen = []

    def pipeline(overrides):  # stands in for the flow: what it would see when Prefect starts its server
        seen.append((timeout.value(), overrides.layers, overrides.extra))
        return {"dvc_experiment": "x"}

    monkeypatch.setattr(flows.pipeline, "pipeline", pipeline)
    result = CliRunner().invoke(app, ["flow", "-S", "layers=3", "--set", "evaluate.shots=100"])
    assert result.exit_code == 0 and "dvc_experiment: x" in result.output
    with temporary_settings({timeout: 300}):
        assert CliRunner().invoke(app, ["flow"]).exit_code == 0
    assert seen == [(120, 3, {"evaluate.shots": 100}), (300, None, {})] and timeout.value() == 20
    for bad, named in (["-S", "layers=0"], "--set: layers: Input should be greater than or equal to 1"), (["-S", "layers"], "--set layers: expected KEY=VALUE"):
        result = CliRunner().invoke(app, ["flow", *bad])
        assert result.exit_code == 2 and named in result.output and len(seen) == 2, result.output


def test_sweep_grid_points_cover_every_axis_and_empty_axes_keep_params_yaml():
    """Every combination x seed, each labelled; an empty axis takes the run's params (params.yaml + overrides)."""
    from flows.sweep import SweepGrid
    from qelm_core.config import load_params

    base = load_params(REPO / "params.yaml", {"student": {"readout": "tied"}})
    points = dict(SweepGrid(layers=[2], alpha=[0.5], seeds=[0, 1]).points(base))
    assert list(points) == ["q8-l2-a0.5-tied-s0", "q8-l2-a0.5-tied-s1"]
    assert {(p["student.n_qubits"], p["student.readout"], p["seed"], p["train.seeds"]) for p in points.values()} == \
        {(8, "tied", 0, 1), (8, "tied", 1, 1)}
    grid = SweepGrid(n_qubits=[6, 8], layers=[2], alpha=[0.5], readout=["basis", "tied"], seeds=[0, 1, 2], steps=7)
    points = dict(grid.points(base))
    assert len(points) == 2 * 2 * 3 and points["q6-l2-a0.5-s2"]["student.readout"] == "basis"
    assert points["q6-l2-a0.5-tied-s2"]["student.readout"] == "tied" and points["q6-l2-a0.5-s2"]["train.steps"] == 7


def test_sweep_shares_upstream_work_compares_and_registers_the_best(harness, project, calls, monkeypatch):
    from prefect.task_runners import ThreadPoolTaskRunner

    from flows.sweep import SweepGrid
    from flows.sweep import sweep

    monkeypatch.setattr("flows.sweep.dask_runner", lambda *args: ThreadPoolTaskRunner(max_workers=2))
    out = sweep(grid=SweepGrid(layers=[1, 2], alpha=[0.5], seeds=[0, 1, 2], steps=5))
    names = calls.stages()
    # prepare and teacher once, assign once per seed (it reads `seed`): DVC's run-cache restores the rest
    assert [names.count(s) for s in DVC_STAGES] == [1, 1, 3, 6, 6, 1]
    assert {c["params"]["train"]["steps"] for c in calls() if c["stage"] == "train"} == {5}
    assert out["best"] == "q4-l2-a0.5-s0"
    registered = next(c["params"] for c in calls() if c["stage"] == "register")
    assert (registered["student"]["layers"], registered["seed"]) == (2, 0)
    folder = Path(out["folder"])
    assert (folder / "pareto.png").stat().st_size > 0
    summary = (folder / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 2 * 2  # header + (2 layer settings x quantum/classical), seeds averaged
    assert set(out["dvc_experiments"]) <= set(dvc_experiments(project)) and len(out["dvc_experiments"]) == 6

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    run_ = client.get_run(out["mlflow_run_id"])
    assert run_.data.tags["qelm.kind"] == "sweep" and run_.data.tags["prefect.flow_run_id"]
    assert {"sweep/pareto.png", "sweep/summary.json"} <= {a.path for a in client.list_artifacts(run_.info.run_id, "sweep")}


def test_only_transient_failures_are_retried(harness, project, calls, monkeypatch, tmp_path):
    import flows.tasks
    from flows.params import Overrides
    from flows.pipeline import pipeline
    from qelm_core.config import EXIT_TRANSIENT, is_transient
    from qelm_core.config import ConfigError
    from qelm_core.llm import TeacherError

    assert not is_transient(ConfigError("bad input")) and not is_transient(TeacherError("not a model"))
    assert not is_transient(ValueError("a bug")) and not is_transient(FileNotFoundError("params.yaml"))
    assert is_transient(ConnectionError("reset by peer")) and is_transient(MemoryError()) and is_transient(TimeoutError())

    monkeypatch.setattr(flows.tasks, "stage_task", flows.tasks.stage_task.with_options(retry_delay_seconds=0))
    monkeypatch.setenv("TOY_FAIL", f"train:{EXIT_TRANSIENT}:2:{tmp_path / 'transient'}")
    state = pipeline(return_state=True)
    assert state.is_completed(), state.message  # two transient failures, then the third try passes
    assert (tmp_path / "transient").read_text() == "2" and calls.stages() == DVC_STAGES

    monkeypatch.setenv("TOY_FAIL", f"evaluate:2:5:{tmp_path / 'bad-input'}")
    state = pipeline(overrides=Overrides(layers=3), return_state=True)
    assert state.is_failed() and "toy failure 1 of 5" in state.message
    assert (tmp_path / "bad-input").read_text() == "1"  # bad input: tried once, never again


# ------------------------------------------------------------------ slow: real stages


@pytest.mark.slow
def test_sharded_teacher_on_two_dask_workers_is_byte_identical(harness, tiny_repo, tmp_path, monkeypatch):
    """The flow's Dask path (shards mapped over a LocalCluster, then the stage merges) == `qelm teacher` in
    one process with the same torch threads per process (each of 2 workers on 2 cores gets 1). A different
    thread count may change the last bits of the teacher's floats, so that is held equal here."""
    import torch

    from flows.pipeline import teacher_shards
    from flows.runner import dask_runner
    from qelm_core import threads
    from qelm_core.config import Paths, load_params
    from qelm_core.lm.stages import teacher

    params, paths, single = load_params(tiny_repo / "params.yaml"), Paths(tmp_path / "dask"), Paths(tmp_path / "single")
    for p in (paths, single):
        shutil.copytree(tiny_repo / "data" / "prepared", p.prepared)
    jobs = teacher.pending_shards(params, paths)
    assert len(jobs) >= 4
    state = teacher_shards.with_options(task_runner=dask_runner(n_workers=2))(params, paths.root, jobs,
                                                                             return_state=True)
    assert state.is_completed(), state.message
    assert teacher.pending_shards(params, paths) == []  # the stage will only merge
    teacher.run(params, paths)

    before = torch.get_num_threads()
    monkeypatch.setenv(threads.ENV_CORES, str(threads.split(2)))  # what each Dask worker was allotted
    try:
        threads.use(threads.LARGE)  # as `qelm teacher` does, with that allotment
        teacher.run(params, single)
    finally:
        torch.set_num_threads(before)
    files = sorted(p.name for p in single.teacher.iterdir())
    assert files == sorted(p.name for p in paths.teacher.iterdir())
    for name in files:
        assert (paths.teacher / name).read_bytes() == (single.teacher / name).read_bytes(), name


@pytest.mark.slow
def test_served_deployment_runs_through_the_api_and_tags_mlflow(tmp_path):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.servers import prefect_server, served_flows

    repo = make_pipeline_repo(tmp_path / "repo", TINY_PARAMS)
    with prefect_server(tmp_path) as api, served_flows(repo, api, tmp_path):
        with temporary_settings({PREFECT_API_URL: api}):
            flow_run = run_deployment("qelm-pipeline/default", timeout=900, poll_interval=3, parameters={
                "overrides": {"layers": 1, "steps": 12}})
        assert flow_run.state.is_completed(), f"{flow_run.state}\n{(tmp_path / 'serve.log').read_text()[-4000:]}"

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("qelm").experiment_id],
                              filter_string=f"tags.`prefect.flow_run_id` = '{flow_run.id}'")
    assert len(runs) == 1
    mlrun = runs[0]
    assert mlrun.data.params["student.layers"] == "1" and mlrun.data.params["train.steps"] == "12"
    assert "ppl_student" in mlrun.data.metrics and mlrun.data.tags["qelm.stage"] == "register"
    assert mlrun.data.tags["prefect.last_flow_run_id"] == str(flow_run.id)
    name = f"{flow_run.name}-{str(flow_run.id)[:4]}"  # the DVC experiment, and the MLflow run's name
    assert mlrun.info.run_name == name and mlrun.data.tags["dvc.exp_name"] == name
    assert {f"dvc.md5.{p}" for p in ("data/teacher", "models/student", "metrics/eval.json")} <= set(mlrun.data.tags)
    assert name in run(["dvc", "exp", "list", "--name-only"], repo).stdout.split()
    assert not (repo / "data" / "teacher").exists()  # the flow works in its own workspace, not the project's
