"""The `qelm-sweep` flow: a grid of student configurations (quantum + equal-parameter classical twin,
several seeds), each point its own DVC experiment, compared on ppl_full; the best quantum is registered.

The stages before `train` run here, point after point: the first point of each distinct upstream params
computes them (teacher shards on Dask), DVC's run-cache restores them for the others. The points'
remaining stages run side by side on the Dask runner; a rerun with one more seed trains only the new seed.
"""
from __future__ import annotations

import itertools
import os
from typing import Any

from prefect import flow, task
from pydantic import BaseModel, ConfigDict, Field

from flows.experiment import Experiment, stage_names
from flows.params import Overrides, RunConfig, resolve
from flows.pipeline import run_stages
from flows.runner import dask_runner
from flows.tasks import experiment_name, open_run, save_run, stage, sweep_report_task
from qelm_core.config import ConfigError, Params
from qelm_core.lm.sweep_report import CONFIG, config_of


class SweepGrid(BaseModel):
    """Student configurations to compare: every n_qubits x layers x alpha x embedded_tokens x readout, each with
    every seed; an empty list = the value of params.yaml (with the run's overrides)."""

    model_config = ConfigDict(extra="forbid")

    n_qubits: list[int] = Field(default_factory=list, description="student.n_qubits values (compared on ppl_full, "
                                "which is comparable across vocabulary sizes)")
    layers: list[int] = Field([2, 4], description="student.layers values")
    alpha: list[float] = Field([0.0, 0.5], description="train.alpha values (0 = no distillation, hard labels only)")
    embedded_tokens: list[int] = Field([0], description="student.embedded_tokens values: angle rows for the K most "
                                                        "frequent ids, the rest enter as bits (0 = a row for every id)")
    readout: list[str] = Field(default_factory=list, description="student.readout values: basis, tied (V circuits "
                               "per position on a device: keep evaluate.noisy_positions small)")
    seeds: list[int] = Field([0, 1, 2], description="seeds per configuration (at least 3 for a spread)")
    steps: int | None = Field(200, description="train.steps for every configuration (a short budget keeps a "
                                                "12-point sweep in minutes); empty = params.yaml")

    def points(self, base: Params) -> list[tuple[str, dict[str, Any]]]:
        """[(label, dotted overrides)] in a stable order; one student per kind per point (the grid's seeds
        take the place of train.seeds)."""
        out = []
        axes = {name: getattr(self, name) or [value] for name, value in config_of(base).items()}
        for *values, seed in itertools.product(*axes.values(), self.seeds):
            point = {**{CONFIG[name]: value for name, value in zip(axes, values)}, "seed": seed, "train.seeds": 1}
            n, layers, alpha, rows, readout = values
            label = f"q{n}-l{layers}-a{alpha:g}" + (f"-k{rows}" if rows else "") + \
                (f"-{readout}" if readout != "basis" else "") + f"-s{seed}"
            out.append((label, point | ({"train.steps": self.steps} if self.steps is not None else {})))
        return out


@task(name="resolve-grid", tags=["qelm"])
def resolve_grid(grid: SweepGrid, overrides: Overrides, project_root: str | None) -> list[RunConfig]:
    """Every grid point validated (and named) before anything runs."""
    if not grid.seeds:
        raise ConfigError("sweep grid: seeds needs at least one value")
    runs = []
    for label, point in grid.points(resolve(overrides, project_root).params):
        try:
            runs.append(resolve(overrides, project_root, point, label))
        except ConfigError as err:
            raise ConfigError(f"sweep point {label}: {err}") from None
    return runs


@flow(name="qelm-sweep-grid", log_prints=True)
def sweep_grid(runs: list[RunConfig], exps: dict[str, Experiment], stages: list[str]) -> dict:
    """`stages` in order for each run, the runs in parallel on this flow's task runner -> {stage: {label: metrics}}."""
    futures = {}
    for run in runs:
        previous = []
        for name in stages:
            future = stage(name, run.label).submit(exps[run.label], name, run.tracking_uri, wait_for=previous)
            futures[(name, run.label)], previous = future, [future]
    results: dict[str, dict] = {}
    for (name, label), future in futures.items():
        results.setdefault(name, {})[label] = future.result()
    return results


@flow(name="qelm-sweep", log_prints=True)
def sweep(grid: SweepGrid = SweepGrid(), overrides: Overrides = Overrides()) -> dict:
    """Train and evaluate every grid point (quantum + classical twin), compare, register the best quantum."""
    runs = resolve_grid(grid, overrides, os.environ.get("QELM_ROOT"))
    names = stage_names(runs[0].project)
    train, register = names.index("train"), names.index("register")
    upstream, per_point, final = names[:train], names[train:register], names[register:]
    exps = {run.label: open_run(run, experiment_name(run.label)) for run in runs}
    for run in runs:  # one after another: the first of equal upstream params computes, DVC's run-cache restores the rest
        run_stages(run, exps[run.label], upstream)
    results = sweep_grid.with_options(task_runner=dask_runner())(runs, exps, per_point)
    report = sweep_report_task(grid, runs, results["train"], results["evaluate"])
    best = next(r for r in runs if r.label == report["best"])
    registered = run_stages(best, exps[best.label], final)
    for run in runs:
        save_run(exps[run.label], upstream + per_point + (final if run is best else []), run.tracking_uri)
    return {**report, "registered": registered, "dvc_experiments": [e.name for e in exps.values()]}
