"""The `qelm-pipeline` flow: dvc.yaml's stages in order as one DVC experiment, one Prefect task per stage.

Missing teacher shards are scored on Dask first (flows/runner.py); the teacher stage then only merges them.

    qelm flow -S layers=4 -S steps=200      # one run without a server (Prefect's temporary one)
"""
from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, unmapped
from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

from flows.experiment import Experiment, stage_names
from flows.params import Overrides, RunConfig, anchor
from flows.runner import dask_runner
from flows.tasks import (experiment_name, open_run, pending_shards, publish_run, resolve_run, save_run, score_shard,
                         stage)
from qelm_core.config import Params

EPHEMERAL_STARTUP_S = 120  # seconds run_once() lets Prefect's temporary server take to answer (see run_once)


@flow(name="qelm-teacher-shards", log_prints=True)
def teacher_shards(params: Params, root: Path, jobs: list) -> int:
    """Score the missing teacher shards in parallel, one file each (the runner decides where)."""
    score_shard.map(unmapped(params), unmapped(root), jobs).result()
    return len(jobs)


def run_stages(run: RunConfig, exp: Experiment, names: list[str]) -> dict[str, dict]:
    """`names` in order in the run's workspace -> {stage: its DVC metrics (+ dvc_reused)}."""
    results = {}
    for name in names:
        if name == "teacher":  # after prepare: the shard plan needs the prepared windows
            params = anchor(run.params, run.project)
            jobs = pending_shards(params, exp.root)
            if jobs:
                teacher_shards.with_options(task_runner=dask_runner())(params, exp.root, jobs)
        results[name] = stage(name, run.label)(exp, name, run.tracking_uri)
    return results


@flow(name="qelm-pipeline", log_prints=True)
def pipeline(overrides: Overrides = Overrides()) -> dict:
    """The DVC pipeline as a DVC experiment named after this flow run (so is its MLflow run), one task per
    stage, with typed overrides of params.yaml; in the project at $QELM_ROOT (default: the working directory)."""
    run = resolve_run(overrides, os.environ.get("QELM_ROOT"))
    exp = open_run(run, experiment_name())
    results = run_stages(run, exp, stage_names(run.project))
    url = publish_run(run, exp, results)
    save_run(exp, list(results), run.tracking_uri)
    metrics = {k: v for k, v in results.get("evaluate", {}).items() if k != "dvc_reused"}
    return {"mlflow_run": url, "dvc_experiment": exp.name,
            "reused": [s for s, r in results.items() if r["dvc_reused"]], "metrics": metrics}


def run_once(overrides: Overrides) -> dict:
    """One run without a Prefect server (`qelm flow -S layers=4 -S evaluate.shots=100`)."""
    # without PREFECT_API_URL the flow starts Prefect's temporary server, which took over its default 20 s
    # to answer on a loaded 2-core machine (two flow runs beside a CI run); wait up to 2 min instead
    timeout = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS
    with temporary_settings({timeout: max(timeout.value(), EPHEMERAL_STARTUP_S)}):
        return pipeline(overrides)
