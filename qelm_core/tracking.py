"""Every MLflow call of the project lives here: runs, params, metrics, artifacts, registry, aliases.

One MLflow run per pipeline run: `train` opens it and records its id in metrics/train.json;
`evaluate` and `register` re-open that same run. The default store is the embedded SQLite file
`mlflow.db` at the repository root; `MLFLOW_TRACKING_URI` points it at a real server.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from qelm_core import run_lease
from qelm_core.config import Params, Paths, QelmError

EXPERIMENT = "qelm"


class TrackingError(QelmError):
    pass


def tracking_uri(paths: Paths) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{paths.root / 'mlflow.db'}"


def require_server(paths: Paths) -> str:
    """The tracking URI; a server that does not answer fails here (no MLflow import: stages call this
    before long work that does not log, so `dvc repro` stops at once, not after the teacher)."""
    uri = tracking_uri(paths)
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5) as resp:
                resp.read()
        except (urllib.error.URLError, OSError) as err:
            raise TrackingError(f"MLFLOW_TRACKING_URI={uri} does not answer ({getattr(err, 'reason', err)}); "
                                "start the server or unset the variable to use the local mlflow.db") from None
    return uri


def configure(paths: Paths) -> str:
    """Point MLflow at the store, failing fast (before long work) when a server does not answer."""
    import mlflow

    uri = require_server(paths)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    mlflow.set_experiment(EXPERIMENT)
    return uri


def flatten(params: Params) -> dict[str, str]:
    out: dict[str, str] = {}

    def walk(prefix: str, node) -> None:
        for key, value in node.items():
            name = f"{prefix}.{key}" if prefix else key
            if isinstance(value, dict):
                walk(name, value)
            else:
                out[name] = json.dumps(value) if isinstance(value, list) else str(value)

    walk("", params.model_dump())
    return out


def git_commit(paths: Paths) -> str:
    proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=paths.root, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else "unknown"


def dvc_out_hashes(paths: Paths) -> dict[str, str]:
    """md5 of every stage output recorded in dvc.lock (what DVC itself uses to identify data)."""
    import yaml

    lock = paths.dvc_lock
    if not lock.is_file():
        return {}
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return {o["path"]: o.get("md5", "") for s in stages.values() for o in s.get("outs", [])}


def prefect_flow_run_id() -> str | None:
    """The id of the Prefect flow run we are part of, if any.

    Inside a flow or task run (flows/, also on Dask workers) that is `prefect.runtime.flow_run.id`.
    Prefect is imported lazily and only if something already imported it: a plain `qelm train`
    never pays for the import. Outside Prefect, $QELM_PREFECT_FLOW_RUN_ID (e.g. a stage started as a
    subprocess of a flow run) or Prefect's own $PREFECT__FLOW_RUN_ID.
    """
    if "prefect" in sys.modules:
        from prefect.runtime import flow_run

        if flow_run.id:
            return str(flow_run.id)
    return os.environ.get("QELM_PREFECT_FLOW_RUN_ID") or os.environ.get("PREFECT__FLOW_RUN_ID") or None


MODEL_TAG = "qelm.model_digest"  # weights.folder_digest of the model a pipeline run trained


@contextmanager
def pipeline_run(paths, params, stage: str = "", model_digest: str | None = None,
                 experiment: str = EXPERIMENT) -> Iterator[str]:
    """Open a pipeline's MLflow run (train: model_digest None), or re-open the run that trained the model
    with `model_digest` (evaluate, register). The link lives in MLflow, not in the model files, so an
    unchanged retrain writes the same bytes and DVC recognises it. Only "no run has that tag" opens a
    new run (a fresh MLflow store beside restored models); an exception marks the run FAILED.
    Both pipelines: `paths` a Paths or ClassifyPaths (its dvc_lock), `experiment` qelm or qelm-classify."""
    configure(paths)
    run_id = None
    if model_digest is not None:
        import mlflow

        mlflow.set_experiment(experiment)
        found = mlflow.search_runs(experiment_names=[experiment], filter_string=f"tags.`{MODEL_TAG}` = '{model_digest}'",
                                   order_by=["attributes.start_time DESC"], max_results=1, output_format="list")
        if found:
            run_id = found[0].info.run_id
        else:
            print(f"{stage}: no MLflow run in {experiment} trained this model ({MODEL_TAG} {model_digest[:12]}); "
                  f"opening a new run")

    def first_tags() -> dict[str, str]:
        tags = {"git_commit": git_commit(paths), **{f"dvc.md5.{k}": v for k, v in dvc_out_hashes(paths).items()}}
        if model_digest is not None:
            tags[MODEL_TAG] = model_digest
        if prefect_flow_run_id():
            tags["prefect.flow_run_id"] = prefect_flow_run_id()
        return tags

    with _owned_run(experiment, params, run_id, stage, first_tags) as opened:
        yield opened


@contextmanager
def _owned_run(experiment: str, params, run_id: str | None, stage: str, first_tags) -> Iterator[str]:
    """Every run context: close the experiment's orphans, start or re-open the run, and hold it (owner
    tags + a lease renewed until exit, run_lease.py) so that no other process takes it for an orphan."""
    import mlflow

    mlflow.set_experiment(experiment)
    run_lease.close_orphaned_runs(experiment)
    # QELM_RUN_NAME: the flow run's DVC experiment name (flows/experiment.py), so the two find each other
    name = (os.environ.get("QELM_RUN_NAME") or None) if run_id is None else None
    with mlflow.start_run(run_id=run_id, run_name=name) as run, run_lease.held(run.info.run_id):
        if run_id is None:
            mlflow.log_params(flatten(params))
            mlflow.set_tags({"qelm.stage": stage, **first_tags(), **({"dvc.exp_name": name} if name else {})})
        else:
            mlflow.set_tag("qelm.stage", stage)
        yield run.info.run_id


def log_metrics(metrics: dict, step: int | None = None, prefix: str = "") -> None:
    import mlflow

    numeric = {f"{prefix}{k}": float(v) for k, v in metrics.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)}
    mlflow.log_metrics(numeric, step=step)


def log_artifact(path: str | Path, folder: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=folder)


def log_dataset(name: str, ids, source: str, digest: str, context: str) -> None:
    import mlflow

    dataset = mlflow.data.from_numpy(ids, source=source, name=name, digest=digest[:36] or None)
    mlflow.log_input(dataset, context=context)


def run_url(run_id: str) -> str:
    """The run's page: on the tracking server, or for a file/database store where `mlflow ui` serves it
    ($QELM_MLFLOW_UI_URL, default mlflow ui's http://127.0.0.1:5000)."""
    import mlflow

    uri = mlflow.get_tracking_uri()
    exp = mlflow.get_run(run_id).info.experiment_id
    base = uri if uri.startswith("http") else os.environ.get("QELM_MLFLOW_UI_URL", "http://127.0.0.1:5000")
    return f"{base.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"


# ------------------------------------------------------------------ model registry

PIP_REQUIREMENTS_PACKAGES = ("torch", "numpy", "pandas", "safetensors", "pydantic", "pennylane", "transformers",
                             "gguf", "mlflow", "pyyaml", "rich", "typer")


def _pip_requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for name in PIP_REQUIREMENTS_PACKAGES:
        try:
            reqs.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            reqs.append(name)
    return reqs + ["fastapi<0.151"]


def log_student_model(student_dir: Path, vocab_size: int, context: int) -> str:
    """Log the student as a pyfunc (model from code + safetensors artifacts) -> its models:/ URI."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "text", required=False), ColSpec(Array("long"), "context_ids", required=False)]),
        outputs=Schema([ColSpec(Array("double"), "probs"), ColSpec(Array("string"), "top_tokens"),
                        ColSpec(Array("double"), "top_probs")]))
    info = mlflow.pyfunc.log_model(
        name="student", python_model=str(Path(__file__).parent / "lm" / "pyfunc_model.py"),
        artifacts={"student": str(student_dir)}, code_paths=[str(Path(__file__).parent)],
        pip_requirements=_pip_requirements(), signature=signature,
        metadata={"vocab_size": vocab_size, "context": context})
    return info.model_uri


def _unless_missing(call, what: str):
    """call() -> its result, or None when MLflow says RESOURCE_DOES_NOT_EXIST. Any other error (an outage,
    a 5xx) stops here: read as "not there" it once deleted the champion or promoted past the gate."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST, ErrorCode

    try:
        return call()
    except MlflowException as err:
        if err.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
            return None
        raise TrackingError(f"cannot {what} in the MLflow registry ({_first_line(err)}); "
                            "the registry was left as it was") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:200]


@contextmanager
def registered_version(model_uri: str, name: str, tags: dict[str, str]) -> Iterator[str]:
    """A new registered version with tags, alias `challenger` on it; yields its number. If the block
    (or setting the alias) fails, the version is deleted again -- and the registered model too if this
    created it and no one added a version meanwhile -- so a failed stage leaves the registry as it found it."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    created = _unless_missing(lambda: client.get_registered_model(name), f"read model {name}") is None
    version = str(mlflow.register_model(model_uri, name, tags=tags).version)
    try:
        client.set_registered_model_alias(name, "challenger", version)
        yield version
    except BaseException as failure:
        try:
            client.delete_model_version(name, version)
            if created and not client.search_model_versions(f"name = '{name}'"):
                client.delete_registered_model(name)
        except MlflowException as err:
            raise TrackingError(f"{name} v{version} could not be deleted after the stage failed "
                                f"({_first_line(err)}); delete it before `qelm promote`") from failure
        raise


def alias_version(name: str, alias: str):
    """The ModelVersion behind `alias`, or None if the alias (or the model) does not exist; any other
    registry error is a TrackingError, never "no champion" (which would promote without the gate)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    model = _unless_missing(lambda: client.get_registered_model(name), f"read model {name}")
    if model is None or alias not in model.aliases:  # a missing alias is INVALID_PARAMETER_VALUE, not 404
        return None
    return _unless_missing(lambda: client.get_model_version_by_alias(name, alias), f"read {name}@{alias}")


def set_alias(name: str, alias: str, version: str, reason: str) -> None:
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_registered_model_alias(name, alias, version)
    client.set_model_version_tag(name, version, f"{alias}_reason", reason)


def load_registered(uri: str):
    import mlflow

    return mlflow.pyfunc.load_model(uri)


# ------------------------------------------------------------------ orchestration (flows/)


def tag_run(run_id: str, tags: dict[str, str]) -> None:
    """Add tags to an existing run (e.g. the Prefect flow run that reused it from cache)."""
    from mlflow import MlflowClient

    client = MlflowClient()
    for key, value in tags.items():
        client.set_tag(run_id, key, value)


def log_sweep(paths: Paths, grid: dict, rows: list[dict], summary: list[dict], files: list[Path],
              best: dict) -> str:
    """One MLflow run for a sweep: its grid, the per-run and per-config tables, plots, the best student."""
    import mlflow
    import pandas as pd

    configure(paths)
    with mlflow.start_run(run_name="sweep") as run:
        tags = {"qelm.kind": "sweep", "git_commit": git_commit(paths)}
        if prefect_flow_run_id():
            tags["prefect.flow_run_id"] = prefect_flow_run_id()
        mlflow.set_tags(tags)
        mlflow.log_params({f"grid.{k}": json.dumps(v) for k, v in grid.items()})
        mlflow.log_table(pd.DataFrame(rows), "sweep/runs.json")
        mlflow.log_table(pd.DataFrame(summary), "sweep/summary.json")
        for path in files:
            mlflow.log_artifact(str(path), artifact_path="sweep")
        log_metrics({f"best_{k}": v for k, v in best.items()})
        mlflow.set_tag("best_run_id", str(best.get("mlflow_run_id", "")))
    return run.info.run_id


def set_tags(tags: dict[str, str]) -> None:
    """Tags on the active run (string results that are not metrics, e.g. the hardware backend's name)."""
    import mlflow

    if tags:
        mlflow.set_tags(tags)


# ------------------------------------------------------------------ benchmarks (qelm bench)

BENCH_EXPERIMENT = "qelm-bench"


def log_bench(paths: Paths, params: dict[str, str], metrics: dict, files: list[Path], tags: dict[str, str]) -> str:
    """One run in the experiment "qelm-bench": the grid as params, every timing as a metric, the JSON + plot."""
    import mlflow

    configure(paths)
    mlflow.set_experiment(BENCH_EXPERIMENT)
    with mlflow.start_run(run_name="bench") as run:
        mlflow.set_tags({"qelm.kind": "bench", "git_commit": git_commit(paths), **tags})
        mlflow.log_params(params)
        log_metrics(metrics)
        for path in files:
            mlflow.log_artifact(str(path), artifact_path="bench")
    return run.info.run_id


# ------------------------------------------------------------------ text classification (qelm_core/classify)

CLASSIFY_EXPERIMENT = "qelm-classify"


def log_classifier_model(artifacts: dict[str, Path], metadata: dict) -> str:
    """Log the classifier as a pyfunc (model from code + safetensors artifacts) -> its models:/ URI."""
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema

    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "text"), ColSpec("string", "dataset", required=False)]),
        outputs=Schema([ColSpec("string", "dataset"), ColSpec("string", "label"), ColSpec(Array("double"), "probs")]))
    info = mlflow.pyfunc.log_model(
        name="classifier", python_model=str(Path(__file__).parent / "classify" / "pyfunc_model.py"),
        artifacts={k: str(v) for k, v in artifacts.items()}, code_paths=[str(Path(__file__).parent)],
        pip_requirements=_pip_requirements(), signature=signature, metadata=metadata)
    return info.model_uri
