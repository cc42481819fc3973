"""The `qelm-sweep` flow: many student configurations trained and evaluated in parallel, compared.

Grid: n_qubits x layers x alpha, each with several seeds (flows/params.py::SweepGrid); every point
is a full set of params, validated before anything runs. Each train run fits the quantum student
and its equal-parameter classical twin, so the two kinds are compared on the same data and budget.

Wiring, with the stage order from dvc.yaml:
  * the stages before `train` run once per distinct set of their params (a vocabulary), in this
    flow, teacher shards on Dask -- the same `run_stages` as qelm-pipeline, so the same cache;
  * `train` .. `evaluate` for all points in the subflow `qelm-sweep-grid` on the Dask runner
    (flows/runner.py: LocalCluster or $QELM_DASK_ADDRESS); a point's evaluate is submitted as soon
    as its training is done, while other trainings still run;
  * `sweep-report`: table + Pareto plot (test perplexity vs trainable parameters, unigram, bigram
    and teacher as lines) logged to one MLflow run; then the stages from `register` on for the best
    quantum student (chosen on validation perplexity), which registers it as `challenger`.
Every stage task is cached by content (see flows/pipeline.py): re-running a sweep with one more
seed trains only the new seed.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.params import Overrides, RunConfig, SweepGrid, upstream_signature
from flows.pipeline import run_stages
from flows.runner import dask_runner
from flows.tasks import resolve_sweep, stage_task, sweep_report
from flows.workspace import StageWork, plan_stage


@flow(name="qelm-sweep-grid", log_prints=True)
def sweep_grid(runs: list[RunConfig], stages: list[str], folders: dict[str, dict[str, Path]]) -> dict:
    """`stages` for every run, in parallel on this flow's task runner -> {stage: {label: result}}."""
    futures, results = {}, {stage: {} for stage in stages}
    for i, stage in enumerate(stages):
        for run in runs:
            if i:
                results[stages[i - 1]][run.label] = futures[run.label].result()
            work = plan_stage(run.ws, stage, run.params, run.stage_params, folders[run.label])
            futures[run.label] = stage_task(run, work).submit(work, run.stage_params, run.tracking_uri)
            folders[run.label][stage] = work.folder
    for run in runs:
        results[stages[-1]][run.label] = futures[run.label].result()
    return {"results": results, "folders": folders}


@flow(name="qelm-sweep", log_prints=True)
def sweep(grid: SweepGrid = SweepGrid(), overrides: Overrides = Overrides(), params_file: str = "params.yaml",
          project_root: str | None = None, work_dir: str | None = None, dask_address: str | None = None,
          dask_workers: int | None = None) -> dict:
    """Train and evaluate every grid point (quantum + classical twin), compare, register the best quantum."""
    runs = resolve_sweep(grid, overrides, params_file, project_root, work_dir)
    names = runs[0].ws.stage_names
    upstream, per_point, final = names[:names.index("train")], names[names.index("train"):names.index("register")], \
        names[names.index("register"):]
    shared: dict[str, dict[str, Path]] = {}
    folders: dict[str, dict[str, Path]] = {}
    for run in runs:
        signature = upstream_signature(run, upstream)
        if signature not in shared:
            shared[signature] = {}
            run_stages(run, upstream, shared[signature], {}, dask_address, dask_workers)
        folders[run.label] = dict(shared[signature])
    grid_out = sweep_grid.with_options(task_runner=dask_runner(dask_address, dask_workers))(runs, per_point, folders)
    report = sweep_report(grid, runs, grid_out["results"]["train"], grid_out["results"]["evaluate"])
    best = next(r for r in runs if r.label == report["best"])
    works: dict[str, StageWork] = {}
    registered = run_stages(best, final, dict(grid_out["folders"][best.label]), works, dask_address, dask_workers)
    return {**report, "registered": registered}
