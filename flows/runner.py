"""The Dask task runner shared by teacher inference and the sweep.

An existing scheduler: `address` or $QELM_DASK_ADDRESS (e.g.
tcp://10.0.0.5:8786; its workers need this environment and the project's folders on a shared
path). Otherwise a LocalCluster started for the subflow and closed after it: `n_workers` or
$QELM_DASK_WORKERS worker processes (default: min(4, cores)), one task thread each, each allotted
cores // workers (qelm_core/threads.py: their torch threads add up to the cores; within its share a
worker's thread count follows the work, e.g. 1 for a small student), reporting to the same Prefect API
as the flow. Workers of an existing cluster need PREFECT_API_URL (and QELM_CORES) set themselves.
"""
from __future__ import annotations

import os

from prefect_dask import DaskTaskRunner

from qelm_core import threads
from qelm_core.config import ConfigError


def dask_runner(address: str | None = None, n_workers: int | None = None) -> DaskTaskRunner:
    address = address or os.environ.get("QELM_DASK_ADDRESS") or None
    if address:
        return DaskTaskRunner(address=address)
    try:
        n = n_workers or int(os.environ.get("QELM_DASK_WORKERS") or 0) or min(4, threads.cores())
    except ValueError:
        raise ConfigError(f"QELM_DASK_WORKERS={os.environ['QELM_DASK_WORKERS']!r} is not a number of workers") from None
    if n < 1:
        raise ConfigError(f"QELM_DASK_WORKERS: {n} workers; give at least 1")
    # each Dask worker trains in its own process (no nested training pool): the workers are the parallelism
    env = {**threads.child_env(threads.split(n)), "QELM_TRAIN_WORKERS": "1", **prefect_env()}
    return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs={
        "n_workers": n, "threads_per_worker": 1, "processes": True, "dashboard_address": None, "env": env})


def prefect_env() -> dict[str, str]:
    """This process's Prefect API (also a temporary server or a test harness) and result storage:
    workers report their task runs there, and share cache records, instead of using their own."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    with get_client(sync_client=True) as client:
        url = str(client.api_url)
    return {"PREFECT_API_URL": url,
            "PREFECT_LOCAL_STORAGE_PATH": str(get_current_settings().results.local_storage_path)}
