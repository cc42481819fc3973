"""Registry and tracking faults against a real `mlflow server` (issue 15).

A failed lookup is not "not there": a 5xx read as "no such model" deleted the champion with the model,
read as "no champion" it promoted an ungated version. Orphan cleanup on a shared server must not kill
live runs of another container that happens to have the same hostname and pid.

One `mlflow server` (SQLite backend, proxied artifacts) for the module; `FaultProxy` is a real HTTP
reverse proxy in front of it that answers chosen API calls with a 503, as a load balancer does while
the server behind it restarts. The MLflow client is the real one, retries off so faults surface at once.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from qelm_core.serving import free_port, http_process
from qelm_core.weights import folder_digest
from tests.reliability.fault_proxy import FaultProxy
from tests.test_registry import save_tiny_student

pytestmark = pytest.mark.slow


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
           "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    with http_process(cmd, port, "/health") as url:
        yield url


def point_at(monkeypatch, url: str) -> None:
    """The process's MLflow store (what `tracking.configure` would pick from MLFLOW_TRACKING_URI)."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)


@pytest.fixture(autouse=True)
def fast_client(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


@pytest.fixture
def proxy(server):
    p = FaultProxy(server)
    yield p
    p.close()


@pytest.fixture(scope="module")
def logged_model(server, tmp_path_factory) -> str:
    """A tiny student logged once as a pyfunc on the server: the source of every version registered here."""
    import mlflow
    import mlflow.tracking._model_registry.utils as registry_utils
    import mlflow.tracking._tracking_service.utils as tracking_utils
    from mlflow import MlflowClient

    from qelm_core import tracking

    folder = tmp_path_factory.mktemp("student")
    save_tiny_student(folder / "student")
    with pytest.MonkeyPatch.context() as mp:  # undoes the URIs (module globals, environment) afterwards
        mp.setattr(tracking_utils, "_tracking_uri", None)
        mp.setattr(registry_utils, "_registry_uri", None)
        point_at(mp, server)
        with mlflow.start_run(experiment_id=MlflowClient().create_experiment("fault-tests")):
            uri = tracking.log_student_model(folder / "student", 8, 2)
    return uri


@pytest.fixture
def direct(server):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=server, registry_uri=server)


def seed_champion(monkeypatch, server: str, model_uri: str, name: str, ppl: str = "5.0") -> None:
    """v1 of `name`, alias champion (good: ppl 5), registered straight on the server."""
    import mlflow
    from mlflow import MlflowClient

    point_at(monkeypatch, server)
    version = mlflow.register_model(model_uri, name, tags={"ppl_test": ppl, "test_data_hash": "h"}).version
    MlflowClient().set_registered_model_alias(name, "champion", version)


def registry_state(client, name: str) -> dict | None:
    from mlflow.exceptions import MlflowException

    try:
        model = client.get_registered_model(name)
    except MlflowException:
        return None
    versions = sorted((v.version for v in client.search_model_versions(f"name = '{name}'")), key=int)
    return {"versions": versions, "aliases": dict(model.aliases)}


def outcome(call):
    try:
        call()
    except Exception as err:  # noqa: BLE001 - the test inspects what came out
        return err
    return None


# ---------------------------------------------------------------- 1. a failed register never deletes the champion


def test_failed_register_keeps_the_champion_when_the_model_lookup_fails(server, proxy, logged_model, direct,
                                                                         monkeypatch):
    from qelm_core import tracking

    name = "faults-lookup"
    seed_champion(monkeypatch, server, logged_model, name)
    point_at(monkeypatch, proxy.url)
    proxy.fail("GET", "/mlflow/registered-models/get", times=1)  # one blip on "does the model exist?"

    def stage():
        with tracking.registered_version(logged_model, name, {"ppl_test": "50.0", "test_data_hash": "h"}):
            raise RuntimeError("the stage failed after registering")

    err = outcome(stage)
    assert proxy.faulted, "the fault was never injected"
    assert registry_state(direct, name) == {"versions": ["1"], "aliases": {"champion": "1"}}, \
        "a failed register changed the registry (deleted the champion?)"
    assert isinstance(err, tracking.TrackingError) and "\n" not in str(err), repr(err)


def test_failed_register_keeps_versions_others_added_meanwhile(server, logged_model, direct, monkeypatch):
    import mlflow

    from qelm_core import tracking

    name = "faults-created-here"
    point_at(monkeypatch, server)

    def stage():
        with tracking.registered_version(logged_model, name, {"ppl_test": "50.0", "test_data_hash": "h"}):
            mlflow.register_model(logged_model, name)  # another process registers v2 of the same model
            raise RuntimeError("the stage failed after registering")

    err = outcome(stage)
    assert isinstance(err, RuntimeError), repr(err)
    assert registry_state(direct, name) == {"versions": ["2"], "aliases": {}}, \
        "rolling back our v1 deleted another process's v2"


# ---------------------------------------------------------------- 2. an outage never skips the promotion gate


def test_alias_lookup_tells_not_found_from_a_server_error(server, proxy, logged_model, monkeypatch):
    from qelm_core import registry, tracking

    name = "faults-alias"
    point_at(monkeypatch, proxy.url)
    assert tracking.alias_version(name, "champion") is None  # no such model
    seed_champion(monkeypatch, server, logged_model, name)
    point_at(monkeypatch, proxy.url)
    assert tracking.alias_version(name, "challenger") is None  # the model, not that alias
    assert tracking.alias_version(name, "champion").version == "1"

    proxy.fail("GET", "/mlflow/registered-models/alias")
    with pytest.raises(tracking.TrackingError, match="registry") as info:
        tracking.alias_version(name, "champion")
    assert "\n" not in str(info.value)
    with pytest.raises(tracking.TrackingError):
        registry.promote(name)


def test_register_stage_never_promotes_when_the_champion_cannot_be_read(server, proxy, logged_model, direct,
                                                                        tmp_path, monkeypatch):
    from qelm_core import tracking
    from qelm_core.config import Paths, parse_params
    from qelm_core.lm.stages import register

    name = "faults-student-gate"
    seed_champion(monkeypatch, server, logged_model, name)
    paths, params = Paths(tmp_path), parse_params({"registry": {"model_name": name}})
    save_tiny_student(paths.student)
    point_at(monkeypatch, proxy.url)
    with tracking.pipeline_run(paths, params, stage="train") as run_id:  # what train does: tag the model's digest
        tracking.tag_run(run_id, {tracking.MODEL_TAG: folder_digest(paths.student)})
    paths.metrics.mkdir()
    keys = ("ppl_student", "ppl_student_sd", "ppl_classical", "ppl_unigram", "ppl_bigram", "ppl_teacher",
            "gap_recovered_student", "selected_seed")
    (paths.metrics / "eval.json").write_text(json.dumps({**{k: 1.0 for k in keys}, "test_data_hash": "h",
                                                         "ppl_student_selected": 50.0}))  # far worse than v1
    proxy.fail("GET", "/mlflow/registered-models/alias", "alias=champion")  # the champion cannot be read

    err = outcome(lambda: register.run(params, paths))
    assert proxy.faulted, "the fault was never injected"
    assert registry_state(direct, name) == {"versions": ["1"], "aliases": {"champion": "1"}}, \
        "a registry error was read as 'no champion yet'"
    assert isinstance(err, tracking.TrackingError) and "\n" not in str(err), repr(err)
    assert direct.get_run(run_id).info.status == "FAILED"


def test_classify_register_never_makes_champion_on_a_server_error(server, proxy, logged_model, direct, tmp_path,
                                                                  monkeypatch):
    from qelm_core import tracking
    from qelm_core.classify.config import ClassifyPaths, parse_classify_params
    from qelm_core.classify.stages import register
    from qelm_core.weights import tree_digest

    name = "faults-classifier-gate"
    seed_champion(monkeypatch, server, logged_model, name)
    paths = ClassifyPaths(tmp_path)
    params = parse_classify_params({"datasets": {"sentiment": {"source": "vader_movies"}}, "seeds": [0],
                                    "registry": {"model_name": name}})
    point_at(monkeypatch, proxy.url)
    model_dir = paths.model_dir("sentiment", 0, "quantum")
    model_dir.mkdir(parents=True)
    (model_dir / "config.json").write_text("{}")
    (model_dir / "model.safetensors").write_bytes(b"")
    with tracking.pipeline_run(paths, params, "classify-train", experiment=tracking.CLASSIFY_EXPERIMENT) as run_id:
        tracking.tag_run(run_id, {tracking.MODEL_TAG: tree_digest(paths.models)})  # how register finds it
    paths.metrics.mkdir()
    acc = {"accuracy_mean": 0.5}
    (paths.metrics / "classify_eval.json").write_text(json.dumps(
        {"datasets": {"sentiment": {"summary": {"quantum_exact": acc, "mlp": acc, "teacher": acc}}}}))
    paths.reports.mkdir()  # the registered seed's own test accuracy (the gate) and its test data (hashed)
    (paths.reports / "classify_per_seed.json").write_text(json.dumps(
        {"sentiment": [{"seed": 0, "quantum_exact": {"accuracy": 0.5}}]}))
    (paths.prepared / "sentiment").mkdir(parents=True)
    (paths.prepared / "sentiment" / "test.jsonl").write_text('{"text": "fine", "label": 1}\n')
    proxy.fail("GET", "/mlflow/registered-models/alias", "alias=champion", times=1)  # one blip

    err = outcome(lambda: register.run(params, paths))
    assert proxy.faulted, "the fault was never injected"
    assert registry_state(direct, name) == {"versions": ["1"], "aliases": {"champion": "1"}}, \
        "a registry error was read as 'no champion yet'"
    assert isinstance(err, tracking.TrackingError) and "\n" not in str(err), repr(err)


# ---------------------------------------------------------------- 3. orphan cleanup never kills live runs


def boot_and_pidns() -> tuple[str, int]:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip(), os.stat("/proc/self/ns/pid").st_ino


def start_ticks(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def open_run(kind: str, tmp_path: Path):
    """The run context a stage of pipeline `kind` opens (experiment qelm or qelm-classify)."""
    from qelm_core import tracking
    from qelm_core.classify.config import ClassifyPaths, parse_classify_params
    from qelm_core.config import Paths, parse_params

    if kind == "qelm":
        return tracking.pipeline_run(Paths(tmp_path), parse_params({}), stage="train")
    params = parse_classify_params({"datasets": {"sentiment": {"source": "vader_movies"}}, "seeds": [0]})
    return tracking.pipeline_run(ClassifyPaths(tmp_path), params, "classify-train", experiment=tracking.CLASSIFY_EXPERIMENT)


needs_proc = pytest.mark.skipif(not Path("/proc/self/ns/pid").exists(), reason="needs Linux /proc")


@needs_proc
@pytest.mark.parametrize("experiment", ["qelm", "qelm-classify"])
def test_orphan_cleanup_closes_only_runs_provably_dead_or_with_an_expired_lease(server, direct, tmp_path,
                                                                                monkeypatch, experiment):
    boot, ns = boot_and_pidns()
    host, now, gone = socket.gethostname(), time.time(), dead_pid()
    sleeper = subprocess.Popen(["sleep", "120"])
    try:
        def owner(pidns, pid, start):
            return {"qelm.host": host, "qelm.pid": str(pid), "qelm.owner": f"{boot}:{pidns}:{pid}:{start}"}

        fresh, expired = {"qelm.lease_expires": str(now + 300)}, {"qelm.lease_expires": str(now - 60)}
        runs = {  # name: (tags, expected status after the next run context opened)
            # another container, same hostname, its own pid namespace: its pid means nothing here
            "other-namespace-fresh-lease": ({**owner(ns + 1, gone, "1"), **fresh}, "RUNNING"),
            "other-namespace-expired-lease": ({**owner(ns + 1, gone, "1"), **expired}, "KILLED"),
            "this-namespace-pid-gone": ({**owner(ns, gone, "1"), **fresh}, "KILLED"),
            "this-namespace-pid-reused": ({**owner(ns, os.getpid(), "1"), **fresh}, "KILLED"),
            "this-namespace-alive-expired-lease": ({**owner(ns, sleeper.pid, start_ticks(sleeper.pid)), **expired},
                                                   "RUNNING"),
            "old-tags-without-lease": ({"qelm.host": host, "qelm.pid": str(gone)}, "RUNNING"),
        }
        exp = direct.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else direct.create_experiment(experiment)
        ids = {label: direct.create_run(exp_id, tags=tags, run_name=label).info.run_id
               for label, (tags, _) in runs.items()}

        point_at(monkeypatch, server)
        with open_run(experiment, tmp_path):
            pass
        got = {label: direct.get_run(ids[label]).info.status for label in runs}
        assert got == {label: status for label, (_, status) in runs.items()}
        reasons = {label: direct.get_run(ids[label]).data.tags.get("qelm.closed_reason", "") for label in runs}
        assert "lease expired" in reasons["other-namespace-expired-lease"]
        assert "ended without closing" in reasons["this-namespace-pid-gone"]
        assert "reused" in reasons["this-namespace-pid-reused"]
    finally:
        sleeper.kill()
        sleeper.wait()


@needs_proc
@pytest.mark.parametrize("experiment", ["qelm", "qelm-classify"])
def test_a_live_run_renews_its_lease_until_it_ends(server, direct, tmp_path, monkeypatch, experiment):
    monkeypatch.setenv("QELM_RUN_LEASE_S", "5")
    monkeypatch.setenv("QELM_RUN_HEARTBEAT_S", "0.3")
    boot, ns = boot_and_pidns()
    point_at(monkeypatch, server)

    def lease(run_id):
        return float(direct.get_run(run_id).data.tags["qelm.lease_expires"])

    with open_run(experiment, tmp_path) as run_id:
        tags = direct.get_run(run_id).data.tags
        assert tags["qelm.owner"] == f"{boot}:{ns}:{os.getpid()}:{start_ticks(os.getpid())}"
        first = lease(run_id)
        assert time.time() < first <= time.time() + 5
        time.sleep(1.5)
        assert lease(run_id) > first, "the lease was not renewed while the run was open"
    assert not [t for t in threading.enumerate() if t.name.startswith("qelm-lease")], "heartbeat still running"
    last = lease(run_id)
    time.sleep(1.0)
    assert lease(run_id) == last, "the lease was renewed after the run ended"
    assert direct.get_run(run_id).info.status == "FINISHED"
