"""Faults, the way they happen: killed stages, exceptions mid-stage, two runs at once, a dead server.

Nothing is lost (a rerun resumes and ends where an uninterrupted run ends), nothing half-done is
recorded (MLflow run FAILED/KILLED, DVC does not record the stage, the registry is unchanged).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from qelm_core.weights import folder_digest
from tests.conftest import command_env, run
from tests.reliability.conftest import assert_refused, qelm, set_params, snapshot

pytestmark = pytest.mark.slow


def start(cmd: list[str], cwd: Path, log: Path, env: dict | None = None) -> subprocess.Popen:
    """A command from this venv in its own process group; stdout to `log`, stderr to `log`.err."""
    with open(log, "w") as out, open(f"{log}.err", "w") as err:
        return subprocess.Popen(cmd, cwd=cwd, env=command_env(env), stdout=out, stderr=err, start_new_session=True)


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        tail = lambda: Path(f"{log}.err").read_text()[-3000:]  # noqa: E731
        assert proc.poll() is None, f"finished before the fault could be injected:\n{tail()}"
        assert time.monotonic() < deadline, f"condition not met in {timeout} s:\n{tail()}"
        time.sleep(0.01)


def polled_step(checkpoint: Path) -> int:
    """The checkpoint's step while training writes it, -1 if there is none yet. safetensors opens the
    path twice (header, then mmap): when training renames a new checkpoint in between, the two differ
    in size and the read fails (seen once in CI); that read is retried at the next poll."""
    from qelm_core.training import checkpoint_state

    try:
        return checkpoint_state(checkpoint)["step"]
    except FileNotFoundError:
        return -1
    except RuntimeError as err:
        if "smaller than the required mapping size" not in str(err):
            raise
        return -1


def sigkill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def mlflow_client(repo: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{repo / 'mlflow.db'}")


def runs_since(repo: Path, t0_ms: int) -> list:
    client = mlflow_client(repo)
    exp = client.get_experiment_by_name("qelm")
    return [r for r in client.search_runs([exp.experiment_id]) if r.info.start_time >= t0_ms]


def registry_state(repo: Path) -> dict:
    client = mlflow_client(repo)
    return {m.name: ({v.version: v.current_stage for v in client.search_model_versions(f"name = '{m.name}'")},
                     dict(m.aliases)) for m in client.search_registered_models()}


def lock_stages(repo: Path) -> dict:
    import yaml

    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


# ---------------------------------------------------------------- SIGKILL mid-stage, then resume


def test_killed_teacher_resumes_to_byte_identical_outputs(tiny_repo, repo_copy, tmp_path):
    reference = {p.name: p.read_bytes() for p in (tiny_repo / "data" / "teacher").iterdir()}
    shutil.rmtree(repo_copy / "data" / ".shards")
    shutil.rmtree(repo_copy / "data" / "teacher")
    shards = lambda: sorted((repo_copy / "data" / ".shards").glob("*/shard-*.safetensors"))  # noqa: E731
    proc = start(["qelm", "teacher"], repo_copy, tmp_path / "teacher.log")
    wait_for(lambda: len(shards()) >= 1, proc, tmp_path / "teacher.log")
    sigkill(proc)
    done = {p: p.stat().st_mtime_ns for p in shards()}
    assert not (repo_copy / "data" / "teacher").exists(), "a killed teacher left partial outputs"

    run(["qelm", "teacher"], repo_copy)
    total = shards()
    assert 1 <= len(done) < len(total), f"killed after {len(done)} of {len(total)} shards: not mid-way"
    assert {p: p.stat().st_mtime_ns for p in done} == done, "finished shards were scored again"
    assert {p.name: p.read_bytes() for p in (repo_copy / "data" / "teacher").iterdir()} == reference


def test_killed_training_resumes_to_the_same_weights(repo_copy, tmp_path):
    import numpy as np

    from qelm_core.training import checkpoint_state

    reference = Path(shutil.copytree(repo_copy, tmp_path / "reference", symlinks=True))
    for repo in (repo_copy, reference):
        set_params(repo, train={"steps": 1500, "checkpoint_every": 10, "eval_every": 100, "seeds": 1})
    run(["qelm", "train"], reference)

    checkpoint = repo_copy / "models" / "checkpoints" / "student_s0.safetensors"
    shutil.rmtree(checkpoint.parent, ignore_errors=True)
    proc = start(["qelm", "train"], repo_copy, tmp_path / "train.log")
    wait_for(lambda: polled_step(checkpoint) >= 100, proc, tmp_path / "train.log")
    sigkill(proc)
    killed_at = checkpoint_state(checkpoint)["step"]
    assert killed_at < 1500
    killed_run = [r for r in runs_since(repo_copy, 0) if r.info.status == "RUNNING"]
    assert len(killed_run) == 1, "the killed train should have left exactly one RUNNING run"

    run(["qelm", "train"], repo_copy)
    for name in ("student", "classical"):
        got = load_file(str(repo_copy / "models" / name / "model.safetensors"))
        want = load_file(str(reference / "models" / name / "model.safetensors"))
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_allclose(got[key], want[key], atol=1e-6, rtol=0, err_msg=f"{name}.{key}")
    assert json.loads((repo_copy / "metrics" / "train.json").read_text())["student_steps"] == 1500
    # SIGKILL cannot be caught: the next run closes the orphan (its process is gone) as KILLED
    orphan = mlflow_client(repo_copy).get_run(killed_run[0].info.run_id)
    assert orphan.info.status == "KILLED" and "ended without closing" in orphan.data.tags["qelm.closed_reason"]


# ---------------------------------------------------------------- an exception inside a stage

# Injected with sitecustomize (PYTHONPATH) into the `qelm <stage>` process that `dvc repro` starts:
# the real stage code runs; one call in it fails the way a full disk or a registry outage would.
FAULT = '''
import sys

# `qelm train` trains in spawned worker processes (distill.train_all): they get the fault too
if sys.argv[0].endswith("qelm") and sys.argv[1:2] == [{stage!r}] or {stage!r} == "train" and "--multiprocessing-fork" in sys.argv:
    if {stage!r} == "train":
        import qelm_core.training as training

        real, calls = training.save_checkpoint, []

        def save_checkpoint(*args, **kwargs):
            calls.append(1)
            if len(calls) == 3:
                raise OSError(28, "No space left on device (injected)")
            return real(*args, **kwargs)

        training.save_checkpoint = save_checkpoint
    else:
        from mlflow import MlflowClient
        from mlflow.exceptions import MlflowException

        def set_registered_model_alias(self, *args, **kwargs):
            raise MlflowException("registry unavailable (injected)")

        MlflowClient.set_registered_model_alias = set_registered_model_alias
'''


@pytest.mark.parametrize("stage", ["train", "register"])
def test_exception_in_a_stage_fails_its_run_and_records_nothing(repo_copy, tmp_path, stage):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(FAULT.format(stage=stage))
    registry, locked = registry_state(repo_copy), lock_stages(repo_copy)
    downstream = snapshot(repo_copy, ("metrics/register.json",))  # written only by a register that succeeded
    set_params(repo_copy, train={"steps": 40})
    t0 = int(time.time() * 1000)
    proc = run(["dvc", "repro"], repo_copy, check=False, env={"PYTHONPATH": str(hook)})
    assert proc.returncode != 0, f"the injected fault did not fail the stage:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert "injected" in proc.stdout + proc.stderr

    runs = runs_since(repo_copy, t0) if stage == "train" else mlflow_client(repo_copy).search_runs(
        [mlflow_client(repo_copy).get_experiment_by_name("qelm").experiment_id],
        f"tags.`qelm.model_digest` = '{folder_digest(repo_copy / 'models' / 'student')}'")
    assert [r.info.status for r in runs] == ["FAILED"], "the stage's MLflow run must end FAILED, not RUNNING"
    assert runs[0].data.tags["qelm.stage"] == stage
    assert lock_stages(repo_copy)[stage] == locked[stage], f"dvc.lock recorded the failed {stage}"
    status = run(["dvc", "status", stage], repo_copy).stdout
    assert f"{stage}:" in status, status
    assert registry_state(repo_copy) == registry, "the registry changed although the stage failed"
    after = snapshot(repo_copy, ("metrics/register.json",))  # DVC removes a stage's outs before running it
    assert after.get("metrics/register.json") in (None, downstream["metrics/register.json"])


def test_sigterm_ends_the_run_failed(repo_copy, tmp_path):
    """kill (SIGTERM), a CI timeout, a cancelled flow: the MLflow run must not stay RUNNING."""
    set_params(repo_copy, train={"steps": 20000, "checkpoint_every": 10})
    checkpoint = repo_copy / "models" / "checkpoints" / "student_s0.safetensors"
    shutil.rmtree(checkpoint.parent, ignore_errors=True)
    t0 = int(time.time() * 1000)
    proc = start(["qelm", "train"], repo_copy, tmp_path / "train.log")
    wait_for(checkpoint.is_file, proc, tmp_path / "train.log")
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(60) == 128 + signal.SIGTERM
    assert [r.info.status for r in runs_since(repo_copy, t0)] == ["FAILED"]


# ---------------------------------------------------------------- two runs at once


def test_second_dvc_repro_fails_fast_on_the_lock_and_clobbers_nothing(repo_copy, tmp_path):
    set_params(repo_copy, train={"steps": 4000, "checkpoint_every": 50})
    checkpoint = repo_copy / "models" / "checkpoints" / "student_s0.safetensors"
    shutil.rmtree(checkpoint.parent, ignore_errors=True)
    first = start(["dvc", "repro"], repo_copy, tmp_path / "first.log")
    wait_for(checkpoint.is_file, first, tmp_path / "first.log")  # the first one is inside `train` now
    second = run(["dvc", "repro"], repo_copy, check=False, timeout=120)
    still_running = first.poll() is None
    assert first.wait(600) == 0, (tmp_path / "first.log.err").read_text()[-3000:]
    assert second.returncode != 0 and still_running, "the second repro must fail while the first holds the lock"
    message = second.stderr + second.stdout  # DVC's own: "... is busy, it is being blocked by: (PID ...)"
    assert "is busy, it is being blocked by" in message and "dvc repro" in message, message
    status = run(["dvc", "status"], repo_copy).stdout
    assert "up to date" in status, status
    assert json.loads((repo_copy / "metrics" / "train.json").read_text())["student_steps"] == 4000


# ---------------------------------------------------------------- the tracking server is down


def test_unreachable_tracking_server_fails_before_long_work(repo_copy):
    from qelm_core.serving import free_port

    before = snapshot(repo_copy)
    shutil.rmtree(repo_copy / "data" / ".shards")  # the teacher would have minutes of work to do
    shutil.rmtree(repo_copy / "models" / "checkpoints", ignore_errors=True)
    dead = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}
    for stage in ("prepare", "teacher", "train", "evaluate", "register"):
        assert_refused(qelm([stage], repo_copy, env=dead), "MLFLOW_TRACKING_URI", "does not answer")
    assert not (repo_copy / "data" / ".shards").exists() and not (repo_copy / "models" / "checkpoints").exists()
    assert snapshot(repo_copy) == before
