"""register -> promote -> load @champion against a real `mlflow server` backed by PostgreSQL.

The fixture starts a throwaway PostgreSQL cluster (initdb, as the unprivileged `postgres` user when
run as root) and an `mlflow server` on free localhost ports, and always stops both.
"""
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from qelm_core.serving import free_port, http_process
from tests.test_registry import save_tiny_student


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--"] + cmd if os.geteuid() == 0 else cmd


@pytest.fixture
def postgres():
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL is not installed (apt-get install postgresql); .ci/run installs it")
    folder = Path(tempfile.mkdtemp(prefix="qelm-pg-"))  # not under pytest's 0700 root-owned tmp: postgres must reach it
    data, sock = folder / "data", folder / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
        shutil.chown(sock, "postgres")
    port = free_port()
    subprocess.run(as_postgres([initdb, "-D", str(data), "-U", "qelm", "--auth=trust", "-E", "UTF8"]),
                   check=True, capture_output=True)
    subprocess.run(as_postgres([pg_ctl, "-D", str(data), "-w", "-l", str(folder / "log"), "-o",
                                f"-p {port} -k {sock} -c listen_addresses=127.0.0.1", "start"]),
                   check=True, capture_output=True)
    try:
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "qelm", "-d", "postgres", "-c",
                        "CREATE DATABASE mlflow"], check=True, capture_output=True)
        yield f"postgresql://qelm@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "stop"]), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def mlflow_server(postgres, tmp_path):
    port = free_port()
    artifacts = tmp_path / "artifacts"
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", postgres, "--artifacts-destination",
           str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with http_process(cmd, port, "/health") as url:
        yield url


@pytest.mark.slow
def test_register_promote_load_against_postgres_server(mlflow_server, tmp_path, monkeypatch):
    import mlflow

    from qelm_core import tracking
    from qelm_core.config import Paths
    from qelm_core.lm.predict import NextTokenPredictor
    from qelm_core.registry import promote

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    assert tracking.configure(Paths(tmp_path)) == mlflow_server
    save_tiny_student(tmp_path / "student")
    for ppl in (10.0, 9.0):
        with mlflow.start_run():
            uri = tracking.log_student_model(tmp_path / "student", 8, 2)
        with tracking.registered_version(uri, "qelm-student", {"ppl_test": str(ppl), "test_data_hash": "h"}):
            assert promote("qelm-student").promote
    assert str(tracking.alias_version("qelm-student", "champion").version) == "2"
    model = tracking.load_registered("models:/qelm-student@champion")
    out = model.predict(pd.DataFrame({"context_ids": [[1, 2]]}))
    direct = NextTokenPredictor.from_folder(tmp_path / "student", with_tokenizer=False).probs(np.array([[1, 2]]))
    assert np.array_equal(np.array(out["probs"].tolist()), direct)


def test_unreachable_tracking_server_is_one_clear_line(tmp_path, monkeypatch):
    from qelm_core import tracking
    from qelm_core.config import Paths

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(tracking.TrackingError, match="does not answer") as info:
        tracking.configure(Paths(tmp_path))
    assert "\n" not in str(info.value)
