"""Real servers for the tests that need them: a Prefect server (API, optionally the UI), the MLflow UI and
`qelm serve`, each on a free localhost port, each a context manager that always stops its
process group (SIGTERM, then SIGKILL)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from qelm_core.serving import free_port


def stop(proc: subprocess.Popen, grace: float = 20) -> None:
    """SIGTERM the process group we started, then SIGKILL it if it lingers."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def server_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", HF_HUB_OFFLINE="1", **extra)
    return env


@contextlib.contextmanager
def started(cmd: list[str], log_path: Path, ready_url: str | None, timeout: float = 120, **popen):
    """Start `cmd` in its own process group, logging to log_path; wait until ready_url answers 200."""
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **popen)
    try:
        deadline = time.time() + timeout
        while ready_url:
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.time() > deadline:
                raise AssertionError(f"{cmd[0]} did not start:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield proc
    finally:
        stop(proc)
        log.close()


@contextlib.contextmanager
def prefect_server(folder: Path, ui: bool = False):
    """`prefect server start` with its own database -> its API URL. With the UI, the server is told its
    own API URL too (else the UI it serves calls port 4200)."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = server_env(PREFECT_HOME=str(folder / "server-home"), PREFECT_UI_ENABLED="true" if ui else "false",
                     **({"PREFECT_API_URL": api} if ui else {}))
    with started(["prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)], folder / "server.log",
                 f"{api}/health", env=env):
        yield api


@contextlib.contextmanager
def mlflow_ui(db: Path, folder: Path):
    """`mlflow server` over a SQLite store -> its base URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with started(["mlflow", "server", "--backend-store-uri", f"sqlite:///{db}", "--host", "127.0.0.1", "--port",
                  str(port), "--workers", "1"], folder / "mlflow.log", f"{url}/health", env=server_env()):
        yield url


@contextlib.contextmanager
def served_flows(repo: Path, api: str, folder: Path, **env):
    """`qelm serve` for `repo` against the Prefect API `api`, until both deployments are registered."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with started([sys.executable, "-m", "qelm_core.cli", "serve"], folder / "serve.log", None, cwd=repo,
                 env=server_env(PREFECT_API_URL=api, PREFECT_HOME=str(folder / "serve-home"), QELM_ROOT=str(repo),
                                QELM_DASK_WORKERS="1", **env)) as proc:
        with temporary_settings({PREFECT_API_URL: api}):
            deadline = time.time() + 120
            while True:  # the deployments appear once `serve` has registered them
                with get_client(sync_client=True) as client:
                    if {"qelm-pipeline", "qelm-sweep"} <= {client.read_flow(d.flow_id).name for d in client.read_deployments()}:
                        break
                assert proc.poll() is None and time.time() < deadline, (folder / "serve.log").read_text()[-3000:]
                time.sleep(1)
        yield proc
