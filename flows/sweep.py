"""The `qelm-sweep` flow: many student configurations trained and evaluated in parallel, compared.

Grid: n_qubits x layers x alpha, each with several seeds (flows/params.py::SweepGrid); every point
is a full set of params, validated before anything runs, and its own DVC experiment (as in
qelm-pipeline). Each train run fits the quantum student and its equal-parameter classical twin, so
the two kinds are compared on the same data and budget.

Wiring, with the stage order from dvc.yaml:
  * the stages before `train` run in this flow for the first point of each vocabulary (teacher
    shards on Dask); every other point with the same upstream params gets them from DVC's run-cache;
  * the remaining stages up to `evaluate` for all points in the subflow `qelm-sweep-grid` on the
    Dask runner (flows/runner.py), each point's stages in order, the points side by side;
  * `sweep-report`: table + Pareto plot logged to one MLflow run; then the stages from `register` on
    in the experiment of the best quantum student (chosen on validation perplexity), which registers
    it as `challenger`; every point is saved as a DVC experiment (`dvc exp show`).
Re-running a sweep with one more seed trains only the new seed: the others are restored by DVC.
"""
from __future__ import annotations

import os

from prefect import flow

from flows.experiment import Experiment, stage_names
from flows.params import Overrides, RunConfig, SweepGrid, upstream_signature
from flows.pipeline import run_stages
from flows.runner import dask_runner
from flows.tasks import experiment_name, open_run, resolve_sweep, save_run, stage, sweep_report


@flow(name="qelm-sweep-grid", log_prints=True)
def sweep_grid(runs: list[RunConfig], exps: dict[str, Experiment], stages: dict[str, list[str]]) -> dict:
    """Each run's `stages[label]` in order, the runs in parallel on this flow's task runner -> {stage: {label: metrics}}."""
    futures = {}
    for run in runs:
        previous = []
        for name in stages[run.label]:
            future = stage(name, run.label).submit(exps[run.label], name, run.tracking_uri, wait_for=previous)
            futures[(name, run.label)], previous = future, [future]
    results: dict[str, dict] = {}
    for (name, label), future in futures.items():
        results.setdefault(name, {})[label] = future.result()
    return results


@flow(name="qelm-sweep", log_prints=True)
def sweep(grid: SweepGrid = SweepGrid(), overrides: Overrides = Overrides()) -> dict:
    """Train and evaluate every grid point (quantum + classical twin), compare, register the best quantum."""
    runs = resolve_sweep(grid, overrides, os.environ.get("QELM_ROOT"))
    names = stage_names(runs[0].project)
    train, register = names.index("train"), names.index("register")
    upstream, per_point, final = names[:train], names[train:register], names[register:]
    exps = {run.label: open_run(run, experiment_name(run.label)) for run in runs}
    stages, seen = {}, set()
    for run in runs:
        signature = upstream_signature(run, upstream)
        if signature not in seen:  # computed once per vocabulary, here
            seen.add(signature)
            run_stages(run, exps[run.label], upstream)
            stages[run.label] = per_point
        else:  # restored from the run-cache in the point's own workspace
            stages[run.label] = upstream + per_point
    results = sweep_grid.with_options(task_runner=dask_runner())(runs, exps, stages)
    report = sweep_report(grid, runs, results["train"], results["evaluate"])
    best = next(r for r in runs if r.label == report["best"])
    registered = run_stages(best, exps[best.label], final)
    for run in runs:
        save_run(exps[run.label], upstream + per_point + (final if run is best else []), run.tracking_uri)
    return {**report, "registered": registered, "dvc_experiments": [e.name for e in exps.values()]}
