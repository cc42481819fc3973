"""REST serving of a registered model and a bounded local load test against it.

The server is MLflow's scoring server (what `mlflow models serve` runs) under uvicorn, behind a request
size limit (qelm_core/scoring_app.py: a too-large body gets a fast 413, not a parse that ends in a 504).
One place starts and always stops the server process (bench, tests); the load test uses only the
standard library: `clients` threads share one request counter, each sending JSON bodies over its own
keep-alive connection, so the figures measure the server, not connection set-up.
"""
from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from typing import Iterator

from qelm_core.config import QelmError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def http_process(cmd: list[str], port: int, health_path: str, env: dict | None = None,
                 startup_s: float = 180.0) -> Iterator[str]:
    """Start `cmd` (a server listening on 127.0.0.1:port), wait until `health_path` answers, yield its base
    URL; always stopped (SIGTERM, then SIGKILL after 30 s). A server that exits early fails with its stderr."""
    log = tempfile.TemporaryFile()  # not a pipe: a chatty server would block once a pipe's buffer is full
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)
    url = f"http://127.0.0.1:{port}"
    what = " ".join(cmd[2:5]) if cmd[:2] == [sys.executable, "-m"] else " ".join(cmd[:3])
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                log.seek(0)
                tail = log.read().decode(errors="replace").strip()[-800:]
                raise QelmError(f"`{what}` exited ({proc.returncode}): {tail}")
            try:
                urllib.request.urlopen(f"{url}{health_path}", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise QelmError(f"`{what}` did not answer {health_path} within {startup_s:.0f} s") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _server_command(model_uri: str, tracking_uri: str, folder: str, host: str, port: int,
                    workers: int) -> tuple[list[str], dict]:
    """Download model_uri into `folder`; the uvicorn command for qelm_core/scoring_app.py (MLflow's scoring
    server behind a request-size limit) and its environment: `workers` processes split this process's
    cores (qelm_core/threads.py), so their torch threads add up to the cores."""
    from mlflow.artifacts import download_artifacts
    from mlflow.exceptions import MlflowException

    from qelm_core import threads
    from qelm_core.scoring_app import MODEL_ENV

    try:
        local = download_artifacts(artifact_uri=model_uri, dst_path=folder, tracking_uri=tracking_uri)
    except MlflowException as err:
        raise QelmError(f"serve {model_uri}: {str(err).splitlines()[0]}") from None
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, MODEL_ENV: local,
           **threads.child_env(threads.split(workers))}
    cmd = [sys.executable, "-m", "uvicorn", "qelm_core.scoring_app:app", "--host", host, "--port", str(port),
           "--workers", str(workers), "--http", "h11"]
    return cmd, env


@contextmanager
def model_server(model_uri: str, tracking_uri: str, startup_s: float = 180.0, workers: int = 1) -> Iterator[str]:
    """The served model (see `serve_model`) on a free 127.0.0.1 port; yields its base URL; always stopped."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="qelm-serve-") as folder:
        cmd, env = _server_command(model_uri, tracking_uri, folder, "127.0.0.1", port, workers)
        with http_process(cmd, port, "/ping", env, startup_s) as url:
            yield url


def serve_model(model_uri: str, tracking_uri: str, host: str, port: int, workers: int) -> int:
    """`qelm serve-model`: serve model_uri in the foreground until Ctrl-C / SIGTERM; uvicorn's exit code."""
    with tempfile.TemporaryDirectory(prefix="qelm-serve-") as folder:
        cmd, env = _server_command(model_uri, tracking_uri, folder, host, port, workers)
        return subprocess.run(cmd, env=env).returncode  # on an exception (SIGTERM, Ctrl-C) run() kills it


def post(url: str, body: bytes, timeout: float = 60.0) -> tuple[int, str]:
    """POST body to {url}/invocations -> (HTTP status, response text); HTTP errors are returned, not raised."""
    request = urllib.request.Request(f"{url}/invocations", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def context_ids_body(rows: list[list[int]]) -> bytes:
    return json.dumps({"dataframe_split": {"columns": ["context_ids"], "data": [[r] for r in rows]}}).encode()


def load_test(url: str, bodies: list[bytes], requests: int = 2000, clients: int = 8, timeout: float = 60.0) -> dict:
    """Send `requests` POSTs (cycling through `bodies`) from `clients` concurrent keep-alive connections.
    Returns counts, errors (non-200 or exceptions, with the first few reasons) and latency percentiles."""
    host, port = url.removeprefix("http://").split(":")
    counter, lock = iter(range(requests)), threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                start = time.perf_counter()
                try:
                    conn.request("POST", "/invocations", bodies[i % len(bodies)],
                                 {"Content-Type": "application/json"})
                    response = conn.getresponse()
                    payload = response.read()
                    ok = response.status == 200 and b"predictions" in payload
                except (OSError, http.client.HTTPException) as error:
                    ok, payload = False, repr(error).encode()
                    conn.close()
                    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
                elapsed = time.perf_counter() - start
                with lock:
                    (latencies if ok else errors).append(elapsed if ok else payload[:200].decode(errors="replace"))
        finally:
            conn.close()

    clock = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - clock
    ms = sorted(x * 1e3 for x in latencies)

    def pct(q: float) -> float | None:
        return ms[min(len(ms) - 1, int(q * len(ms)))] if ms else None

    return {"requests": requests, "clients": clients, "ok": len(latencies), "errors": len(errors),
            "error_examples": errors[:3], "wall_s": wall, "requests_per_s": len(latencies) / wall if wall else None,
            "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": ms[-1] if ms else None,
            "mean_ms": statistics.fmean(ms) if ms else None}
