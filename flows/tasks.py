"""Prefect tasks: one per DVC stage (run in the flow run's DVC experiment), teacher shards, run links.

Retries only for failures that can pass by themselves (the stage exited with EXIT_TRANSIENT: I/O,
memory, network, IBM service), with exponential backoff and jitter; bad input and bugs never.
"""
from __future__ import annotations

import functools
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.tasks import exponential_backoff

from flows.experiment import Experiment, TransientStageFailure, open_experiment, run_stage, save_experiment, stage_env
from flows.params import Overrides, RunConfig, resolve
from qelm_core import tracking
from qelm_core.config import Params, Paths, is_transient
from qelm_core.lm import sweep_report
from qelm_core.lm.sweep_report import config_of
from qelm_core.lm.stages import teacher as teacher_stage

STAGE_TAG = "qelm-stage"
SUMMARY = ("ppl_student", "ppl_classical", "ppl_bigram", "ppl_unigram", "ppl_teacher", "gap_recovered_student",
           "ppl_full_student", "ppl_full_classical", "ppl_full_teacher")
RETRY = dict(retry_delay_seconds=exponential_backoff(backoff_factor=10), retry_jitter_factor=0.5,
             retry_condition_fn=lambda task, task_run, state: transient(state.result(raise_on_failure=False)))


def transient(exc) -> bool:
    return isinstance(exc, TransientStageFailure) or is_transient(exc)


@task(name="resolve-params", tags=["qelm"])
def resolve_run(overrides: Overrides, project_root: str | None, extra: dict | None = None, label: str = "") -> RunConfig:
    """params.yaml + overrides -> validated RunConfig; a bad value fails the flow run here, before any stage."""
    return resolve(overrides, project_root, extra, label)


def experiment_name(label: str = "") -> str:
    """The Prefect flow run's name (+ a sweep point's label): the DVC experiment and the MLflow run name."""
    name = f"{flow_run.name or 'qelm'}-{str(flow_run.id or '')[:4]}"
    return f"{name}-{label}" if label else name


@task(name="open-experiment", tags=["qelm"])
def open_run(run: RunConfig, name: str) -> Experiment:
    exp = open_experiment(run.project, name, run.dotted, run.params)
    get_run_logger().info("DVC experiment %s in %s", name, exp.root)
    return exp


@task(tags=[STAGE_TAG], retries=3, **RETRY)
def stage_task(exp: Experiment, stage: str, tracking_uri: str) -> dict:
    """`dvc repro --single-item <stage>` in the run's workspace; its metrics, plus whether DVC reused it."""
    reused, metrics = run_stage(exp, stage, stage_env(exp, tracking_uri, str(flow_run.id or "")), get_run_logger().info)
    return {**metrics, "dvc_reused": reused}


def stage(name: str, label: str = ""):
    """The stage task, named after the stage (and the sweep point) in the UI."""
    return stage_task.with_options(name=name, task_run_name=f"{name}[{label}]" if label else name)


@task(name="save-experiment", tags=["qelm"])
def save_run(exp: Experiment, stages: list[str], tracking_uri: str) -> None:
    """`dvc exp save` of the stages the run went through (an unregistered sweep point has no register outputs)."""
    save_experiment(exp, stages, stage_env(exp, tracking_uri, None))
    get_run_logger().info("saved as DVC experiment %s (`dvc exp show`, `dvc exp apply %s`)", exp.name, exp.name)


@functools.lru_cache(maxsize=1)
def _teacher_model(source):
    """One teacher per worker process, loaded on its first shard and kept for the next ones."""
    from qelm_core.llm import load_teacher

    return load_teacher(source)


@task(name="pending-shards", tags=["qelm"])
def pending_shards(params: Params, root: Path) -> list:
    return teacher_stage.pending_shards(params, Paths(root))


@task(name="teacher-shard", task_run_name="shard-{job.split}-{job.index}", tags=["teacher-shard"], retries=2, **RETRY)
def score_shard(params: Params, root: Path, job) -> str:
    """Score one shard into its own file (loading the teacher is the transient part, hence retries)."""
    from qelm_core.llm import resolve_teacher
    from qelm_core.lm.teacher import shard_path

    teacher_stage.score_shards(params, Paths(root), [job], _teacher_model(resolve_teacher(params.teacher.model)))
    return str(shard_path(job.folder, job.index))


@task(name="mlflow-link", tags=["qelm"])
def publish_run(run: RunConfig, exp: Experiment, results: dict) -> str | None:
    """Link the Prefect run to its MLflow run (markdown artifact + log line); tag it with every output's md5."""
    logger = get_run_logger()
    run_id = (results.get("train") or {}).get("mlflow_run_id")
    if not run_id:
        logger.warning("no MLflow run id in the train stage's metrics; nothing to link")
        return None
    tracking.configure(Paths(run.project))  # the store resolve_run checked: the project's or $MLFLOW_TRACKING_URI
    url = tracking.run_url(run_id)
    tracking.tag_run(run_id, {"prefect.last_flow_run_id": str(flow_run.id), "dvc.exp_name": exp.name,
                              **{f"dvc.md5.{k}": v for k, v in tracking.dvc_out_hashes(Paths(exp.root)).items()}})
    metrics = results.get("evaluate") or {}
    table = [f"| {k} | {metrics[k]:.4g} |" for k in SUMMARY if isinstance(metrics.get(k), (int, float))]
    stages = [f"| {s} | {'restored by DVC' if r.get('dvc_reused') else 'ran'} |" for s, r in results.items()]
    create_markdown_artifact(
        key="mlflow-run", description="MLflow run and DVC experiment of this pipeline run",
        markdown="\n".join([f"## MLflow run\n[{run_id}]({url})\n", f"DVC experiment `{exp.name}`: `dvc exp show`, "
                            f"`dvc exp apply {exp.name}`\n", "| metric | value |", "|---|---|", *table, "",
                            "| stage | work |", "|---|---|", *stages]))
    logger.info("MLflow run %s: %s", run_id, url)
    return url


@task(name="sweep-report", tags=["qelm"])
def sweep_report_task(grid, runs: list[RunConfig], train: dict[str, dict], evaluate: dict[str, dict]) -> dict:
    """Comparison table + Pareto plot -> one MLflow run and a Prefect artifact; names the best quantum student."""
    points = {r.label: {**config_of(r.params), "seed": r.params.seed} for r in runs}
    project = Paths(runs[0].project)
    report = sweep_report.publish(project, grid.model_dump(), points, train, evaluate,
                                  project.root / ".qelm" / "sweeps" / str(flow_run.id),
                                  {"prefect.last_flow_run_id": str(flow_run.id)})
    create_markdown_artifact(key="sweep", markdown=report.pop("markdown"),
                             description="quantum vs classical students over the grid")
    get_run_logger().info("sweep MLflow run %s: %s; best quantum student %s", report["mlflow_run_id"], report["url"],
                          report["best"]["label"])
    return {**report, "best": report["best"]["label"]}
