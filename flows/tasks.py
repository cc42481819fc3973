"""Prefect tasks: one generic stage task (the functions dvc.yaml runs), teacher shards, run links.

Caching: a stage task's cache key is `StageWork.key` (flows/workspace.py). The cache records (the
stage's returned metrics) are Prefect results, in Prefect's result storage ($PREFECT_LOCAL_STORAGE_PATH,
default ~/.prefect/storage); the outputs are in the key's folder. SERIALIZABLE isolation with file
locks in `<work dir>/locks` makes a second run with the same key wait for the first and then reuse
its result instead of computing it again beside it (a lock whose process died is broken). A key
whose folder lost outputs, and that no run is producing, is recomputed (`refresh_cache`); a lost
record only costs recomputing into the existing folder.

Retries: only for failures that can pass by themselves (loading the teacher; submitting circuits to
IBM hardware), with exponential backoff and jitter. A `QelmError` is bad input and never retried,
nor is anything that is not an I/O, memory or network error (a bug does not heal by waiting).
"""
from __future__ import annotations

import functools
import importlib
import json
import os
import socket
import threading
from contextlib import contextmanager
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import CachePolicy
from prefect.locking.filesystem import FileSystemLockManager
from prefect.tasks import exponential_backoff

from flows.params import Overrides, RunConfig, resolve
from flows.workspace import StageWork
from qelm_core import tracking
from qelm_core.config import ConfigError, Params, Paths, QelmError
from qelm_core.io import atomic_write_bytes
from qelm_core.stages import teacher as teacher_stage

TRANSIENT = (OSError, MemoryError, TimeoutError)  # OSError covers ConnectionError and requests' errors
TRANSIENT_MODULES = ("qiskit_ibm_runtime", "requests", "urllib3", "httpx")
STAGE_TAG = "qelm-stage"


def transient_only(task, task_run, state) -> bool:
    """retry_condition_fn: retry I/O, memory and IBM-service errors; never bad input (QelmError) or bugs."""
    exc = state.result(raise_on_failure=False)
    if isinstance(exc, QelmError):
        return False
    return isinstance(exc, TRANSIENT) or type(exc).__module__.split(".")[0] in TRANSIENT_MODULES


def uses_ibm_hardware(params: Params) -> bool:
    """Training submits jobs to a real IBM backend (fake backends are local simulators)."""
    from qelm_core.devices import is_fake_backend_name

    return params.device.name == "qiskit.remote" and not is_fake_backend_name(params.device.backend)


def stage_retries(stage: str, params: Params) -> int:
    """The teacher stage loads the teacher (when a shard is missing); train may submit to IBM hardware."""
    if stage == "teacher" or (stage == "train" and uses_ibm_hardware(params)):
        return 3
    return 0


class StageLocks(FileSystemLockManager):
    """Prefect's file locks, plus the owner's pid and host in the lock file: a lock left behind by a
    process that died (killed, out of memory) is broken, instead of making every later run of that
    key wait forever. A lock held on another host (a remote Dask worker) is respected."""

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        acquired = super().acquire_lock(key, holder, acquire_timeout, hold_timeout)
        if acquired:
            owner = {"pid": os.getpid(), "host": socket.gethostname()}
            path = self._lock_path_for_key(key)
            atomic_write_bytes(path, json.dumps({**json.loads(path.read_bytes()), **owner}).encode())
            self._locks[key].update(owner)
        return acquired

    def is_locked(self, key: str, use_cache: bool = False) -> bool:
        try:
            info = self._get_lock_info(key, use_cache=use_cache)
            if info and info.get("host") == socket.gethostname() and not _alive(info.get("pid")):
                Path(info["path"]).unlink(missing_ok=True)
                self._locks.pop(key, None)
                return False
            return super().is_locked(key, use_cache)
        except ValueError:  # Prefect writes lock files in place: one being written right now is held
            return True


def _alive(pid: int | None) -> bool:
    if not pid:
        return True  # no owner recorded (yet): treat as held
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class StageKey(CachePolicy):
    """Cache key = the stage's content key, computed by plan_stage before the task is called."""

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str | None:
        work = inputs.get("work")
        return work.key if isinstance(work, StageWork) else None


_ENV_LOCK = threading.Lock()
_ENV_STATE = {"users": 0, "old": None}


@contextmanager
def tracking_env(uri: str):
    """Stages in work folders log to the project's MLflow store (also on Dask workers); the variable is
    restored when the last stage of this process using it finishes (stages may run in threads)."""
    with _ENV_LOCK:
        if _ENV_STATE["users"] == 0:
            _ENV_STATE["old"] = os.environ.get("MLFLOW_TRACKING_URI")
            os.environ["MLFLOW_TRACKING_URI"] = uri
        elif os.environ.get("MLFLOW_TRACKING_URI") != uri:
            raise ConfigError(f"stages of two MLflow stores in one process at once ({uri}, "
                              f"{os.environ.get('MLFLOW_TRACKING_URI')}); run the flows in separate processes")
        _ENV_STATE["users"] += 1
    try:
        yield
    finally:
        with _ENV_LOCK:
            _ENV_STATE["users"] -= 1
            if _ENV_STATE["users"] == 0:
                if _ENV_STATE["old"] is None:
                    os.environ.pop("MLFLOW_TRACKING_URI", None)
                else:
                    os.environ["MLFLOW_TRACKING_URI"] = _ENV_STATE["old"]


@task(name="resolve-params", tags=["qelm"])
def resolve_run(overrides: Overrides, params_file: str, project_root: str | None, work_dir: str | None,
                extra: dict | None = None, label: str = "") -> RunConfig:
    """params.yaml + overrides -> validated RunConfig; a bad value fails the flow run here, before any stage."""
    return resolve(overrides, params_file, project_root, work_dir, extra, label)


@task(persist_result=True, result_serializer="json", tags=[STAGE_TAG])
def run_stage(work: StageWork, params: Params, tracking_uri: str) -> dict:
    """`qelm_core.stages.<stage>.run(params, Paths(work.folder))`: exactly what `qelm <stage>` runs."""
    from qelm_core import threads

    stage = importlib.import_module(f"qelm_core.stages.{work.stage}")
    threads.use(threads.stage_work(work.stage, params.student.n_qubits, params.train.batch_size))  # as `qelm <stage>`
    with tracking_env(tracking_uri):
        return stage.run(params, Paths(work.folder))


def stage_task(run: RunConfig, work: StageWork, params: Params | None = None):
    """The stage task configured for this key: cache, isolation, retries, names."""
    params = params or run.stage_params
    retries = stage_retries(work.stage, params)
    locks = StageLocks(run.ws.locks)
    policy = StageKey().configure(lock_manager=locks, isolation_level="SERIALIZABLE")
    name = f"{work.stage}" + (f"[{run.label}]" if run.label else "")
    # outputs missing and nobody producing them: the cache record (if any) is stale, recompute
    refresh = not work.complete and not locks.is_locked(work.key)
    return run_stage.with_options(
        name=work.stage, task_run_name=name, cache_policy=policy, refresh_cache=refresh,
        retries=retries,
        retry_delay_seconds=exponential_backoff(backoff_factor=10) if retries else 0,
        retry_jitter_factor=0.5 if retries else None, retry_condition_fn=transient_only)


# ------------------------------------------------------------------ teacher inference, sharded


@functools.lru_cache(maxsize=1)
def _teacher_model(source):
    """One teacher per worker process, loaded on its first shard and kept for the next ones."""
    from qelm_core.teacher import load_teacher

    return load_teacher(source)


@task(name="pending-shards", tags=["qelm"])
def pending_shards(params: Params, folder: Path) -> list:
    return teacher_stage.pending_shards(params, Paths(folder))


@task(name="teacher-shard", task_run_name="shard-{job.split}-{job.index}", tags=["teacher-shard"],
      retries=2, retry_delay_seconds=exponential_backoff(backoff_factor=5), retry_jitter_factor=0.5,
      retry_condition_fn=transient_only)
def score_shard(params: Params, folder: Path, job) -> str:
    """Score one shard into its own file (loading the teacher is the transient part, hence retries)."""
    from qelm_core.teacher import resolve_teacher, shard_path

    model = _teacher_model(resolve_teacher(params.teacher.model))
    teacher_stage.score_shards(params, Paths(folder), [job], model)
    return str(shard_path(job.folder, job.index))


# ------------------------------------------------------------------ the MLflow run, shown in Prefect


def _metrics_table(metrics: dict, keys: tuple[str, ...]) -> str:
    rows = [f"| {k} | {metrics[k]:.4g} |" for k in keys if isinstance(metrics.get(k), (int, float))]
    return "\n".join(["| metric | value |", "|---|---|", *rows])


@task(name="mlflow-link", tags=["qelm"])
def publish_run(run: RunConfig, results: dict, works: dict[str, StageWork]) -> str | None:
    """Link the Prefect run to its MLflow run (markdown artifact + log line) and tag the MLflow run."""
    logger = get_run_logger()
    run_id = (results.get("train") or {}).get("mlflow_run_id")
    if not run_id:
        logger.warning("no MLflow run id in the train stage's result; nothing to link")
        return None
    with tracking_env(run.tracking_uri):
        tracking.configure(Paths(run.ws.project))
        url = tracking.run_url(run_id)
        from prefect.runtime import flow_run

        tracking.tag_run(run_id, {"prefect.last_flow_run_id": str(flow_run.id)})
    folders = "\n".join(f"| {s} | {'reused' if w.complete else 'ran'} | `{w.folder}` |" for s, w in works.items())
    metrics = _metrics_table(results.get("evaluate") or {}, ("ppl_quantum", "ppl_classical", "ppl_bigram",
                                                             "ppl_unigram", "ppl_teacher", "gap_recovered"))
    create_markdown_artifact(
        key="mlflow-run", description="MLflow run of this pipeline run",
        markdown=f"## MLflow run\n[{run_id}]({url})\n\n{metrics}\n\n| stage | work | folder |\n|---|---|---|\n{folders}\n")
    logger.info("MLflow run %s: %s", run_id, url)
    return url


# ------------------------------------------------------------------ sweep


@task(name="resolve-grid", tags=["qelm"])
def resolve_sweep(grid, overrides: Overrides, params_file: str, project_root: str | None,
                  work_dir: str | None) -> list[RunConfig]:
    """Every grid point validated (and named) before anything runs."""
    from flows.params import resolve_grid

    return resolve_grid(grid, overrides, params_file, project_root, work_dir)


@task(name="sweep-report", tags=["qelm"])
def sweep_report(grid, runs: list[RunConfig], train: dict[str, dict], evaluate: dict[str, dict]) -> dict:
    """Comparison table + Pareto plot -> one MLflow run and a Prefect artifact; names the best quantum student."""
    from prefect.runtime import flow_run

    from flows import report

    points = {r.label: {"n_qubits": r.params.student.n_qubits, "layers": r.params.student.layers,
                        "alpha": r.params.train.alpha, "seed": r.params.seed} for r in runs}
    table = report.rows(points, train, evaluate)
    summary = report.summarize(table)
    best = report.registered_winner(table, runs[0].params.student.n_qubits)  # the grid's first n_qubits
    out = runs[0].ws.base / "sweeps" / str(flow_run.id)
    files = [report.pareto_plot(out / "pareto.png", summary), report.write_csv(out / "runs.csv", table),
             report.write_csv(out / "summary.csv", summary)]
    project = Paths(runs[0].ws.project)
    files += report.publish_pareto(project.plots, summary)
    with tracking_env(runs[0].tracking_uri):
        run_id = tracking.log_sweep(project, grid.model_dump(), table, summary, files,
                                    {k: best[k] for k in ("test_ppl", "val_ppl", "params", "n_qubits", "mlflow_run_id")})
        for mlflow_run in {r["mlflow_run_id"] for r in table if r["mlflow_run_id"]}:
            tracking.tag_run(mlflow_run, {"prefect.last_flow_run_id": str(flow_run.id), "qelm.sweep_run_id": run_id})
        url = tracking.run_url(run_id)
    create_markdown_artifact(key="sweep", markdown=report.markdown(summary, table, best, url),
                             description="quantum vs classical students over the grid")
    get_run_logger().info("sweep MLflow run %s: %s; best quantum student %s", run_id, url, best["label"])
    return {"mlflow_run_id": run_id, "url": url, "best": best["label"], "folder": str(out)}
