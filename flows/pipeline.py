"""The `qelm-pipeline` flow: prepare -> teacher -> train -> evaluate -> register, as Prefect tasks.

Each task calls `qelm_core.stages.<stage>.run(params, paths)`, the function `qelm <stage>` (and so
`dvc repro`) calls; the stage list and order come from parsing dvc.yaml. Parameters are typed
overrides of params.yaml (flows/params.py), validated by `load_params` before any stage starts.

Work already done is not redone -- one mechanism, content-addressed stage folders whose key is
also the Prefect cache key of the stage's task (flows/workspace.py, flows/tasks.py):

    key(stage) = sha256(effective values of the stage's dvc.yaml params keys (params.yaml +
                        overrides + defaults), md5 of each dvc.yaml dep (code files; outputs of
                        upstream stages, as DVC computes it), the corpus files' content)
    folder     = <project>/.qelm/work/<stage>-<key[:16]>   (the stage's Paths.root)
    task       = cache key = key  ->  `Cached` (nothing runs) when that key completed before

Why not drive DVC itself: `dvc repro` has one workspace, so two flow runs with different
overrides at once would overwrite each other's data/, models/ and dvc.lock. Keyed folders give
every distinct input its own place (concurrent runs never clobber), let runs share identical
upstream work (a sweep prepares and scores the teacher once per vocabulary), and with
SERIALIZABLE isolation (file locks) a second run of the same key waits and reuses instead of
computing beside the first. The rule is DVC's (the params dvc.yaml lists + dep hashes, DVC's own
md5s, which also tag the MLflow runs), plus corpus edits DVC cannot see. A flow never touches the
repository's data/, models/ or dvc.lock. A folder that lost outputs is recomputed; delete `.qelm/`
to start over; `stage-inputs.json` in each folder shows what its key was computed from.

Retries (flows/tasks.py): teacher loading and IBM-hardware submission only, exponential backoff
with jitter, never for a QelmError (bad input).

Scale-out: missing teacher shards are mapped over a Dask cluster (flows/runner.py) in the subflow
`qelm-teacher-shards`; the teacher stage then only merges them, in order, byte-identically.

    python -m flows.pipeline --set layers=4 --set steps=200      # one run, Prefect ephemeral mode
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml
from prefect import flow, unmapped

from flows.params import KEYS, Overrides, RunConfig
from flows.runner import dask_runner
from flows.tasks import pending_shards, publish_run, resolve_run, score_shard, stage_task
from flows.workspace import StageWork, plan_stage
from qelm_core.config import Params, QelmError


@flow(name="qelm-teacher-shards", log_prints=True)
def teacher_shards(params: Params, folder: Path, jobs: list) -> int:
    """Score the missing teacher shards in parallel, one file each (the runner decides where)."""
    score_shard.map(unmapped(params), unmapped(folder), jobs).result()
    return len(jobs)


def run_stages(run: RunConfig, names: list[str], folders: dict[str, Path], works: dict[str, StageWork],
               dask_address: str | None = None, dask_workers: int | None = None) -> dict[str, dict]:
    """Run `names` in order in this flow; `folders`/`works` gain each stage's folder and plan."""
    results = {}
    for name in names:
        work = plan_stage(run.ws, name, run.params, run.stage_params, folders)
        if name == "teacher" and not work.complete:
            jobs = pending_shards(run.stage_params, work.folder)
            if jobs:
                runner = dask_runner(dask_address, dask_workers)
                teacher_shards.with_options(task_runner=runner)(run.stage_params, work.folder, jobs)
        results[name] = stage_task(run, work)(work, run.stage_params, run.tracking_uri)
        folders[name], works[name] = work.folder, work
    return results


@flow(name="qelm-pipeline", log_prints=True)
def pipeline(overrides: Overrides = Overrides(), params_file: str = "params.yaml", project_root: str | None = None,
             work_dir: str | None = None, dask_address: str | None = None, dask_workers: int | None = None) -> dict:
    """The DVC pipeline's stages as Prefect tasks, with typed overrides of params.yaml.

    project_root: the repository (default $QELM_ROOT or the working directory); work_dir: where stage
    folders and cache records go (default <project>/.qelm); dask_address: an existing Dask scheduler
    for teacher inference (default $QELM_DASK_ADDRESS, else a LocalCluster of dask_workers workers).
    """
    run = resolve_run(overrides, params_file, project_root, work_dir)
    folders: dict[str, Path] = {}
    works: dict[str, StageWork] = {}
    results = run_stages(run, run.ws.stage_names, folders, works, dask_address, dask_workers)
    url = publish_run(run, results, works)
    return {"mlflow_run": url, "folders": {k: str(v) for k, v in folders.items()},
            "metrics": results.get("evaluate", {})}


def parse_overrides(items: list[str]) -> Overrides:
    """["layers=4", "evaluate.shots=100"] -> Overrides (field names or dotted params.yaml keys)."""
    fields, extra = {}, {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set {item}: expected key=value")
        (fields if key in KEYS else extra)[key] = yaml.safe_load(value)
    return Overrides(**fields, extra=extra)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flows.pipeline", description=pipeline.description)
    parser.add_argument("--set", "-S", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override: one of {', '.join(KEYS)} or a dotted params.yaml key")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--root", default=None, help="project root (default: $QELM_ROOT or .)")
    parser.add_argument("--dask-address", default=None)
    parser.add_argument("--dask-workers", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        result = pipeline(parse_overrides(args.set), args.params, args.root, None, args.dask_address,
                          args.dask_workers)
    except QelmError as err:  # bad input: one line, like the qelm CLI (Prefect has logged the details)
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    print(yaml.safe_dump(result, sort_keys=False))


if __name__ == "__main__":
    main()
