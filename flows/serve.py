"""Serve the deployments `qelm-pipeline/default` and `qelm-sweep/default` from this process.

    prefect server start                       # UI + API on http://127.0.0.1:4200
    prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api
    qelm serve                                 # --limit N: most flow runs at the same time
    prefect deployment run 'qelm-pipeline/default' -p overrides='{"layers": 4}'

Flow runs execute in subprocesses of this one, for the project in its working directory (or
$QELM_ROOT): each one a DVC experiment on that project's params.yaml, code, DVC cache and mlflow.db.
"""
from __future__ import annotations

from prefect import serve
from prefect.deployments.runner import EntrypointType

from flows.pipeline import pipeline
from flows.sweep import sweep

DEPLOYMENT = "default"


def deployments(name: str = DEPLOYMENT) -> list:
    # module-path entrypoints ("flows.pipeline.pipeline"): they load wherever `flows` is importable
    return [pipeline.to_deployment(name=name, entrypoint_type=EntrypointType.MODULE_PATH, tags=["qelm"],
                                   description="prepare -> teacher -> train -> evaluate -> register, with "
                                               "typed overrides of params.yaml"),
            sweep.to_deployment(name=name, entrypoint_type=EntrypointType.MODULE_PATH, tags=["qelm"],
                                description="grid of students (quantum + classical twin) x seeds, Pareto plot, "
                                            "best quantum registered as challenger")]


def main(limit: int | None = None, name: str = DEPLOYMENT) -> None:
    serve(*deployments(name), limit=limit)
