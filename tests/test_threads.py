"""The torch thread policy (qelm_core/threads.py): the rule, the override and its one-line error, the
allotment shared by worker processes, and where qelm applies it (CLI stages, training workers, Dask)."""
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from qelm_core import threads
from qelm_core.cli import app
from qelm_core.config import ConfigError
from tests.conftest import REPO


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ("QELM_THREADS", "QELM_CORES", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_rule_depends_on_work_and_allotment_only(monkeypatch):
    W = threads.WORK_PER_THREAD
    assert threads.threads_for(threads.student_work(8, 256), allotted=16) == 1  # the default student
    assert threads.threads_for(W - 1, allotted=16) == 1
    assert threads.threads_for(2 * W, allotted=16) == 2 and threads.threads_for(2 * W, allotted=1) == 1
    assert threads.threads_for(100 * W, allotted=4) == 4 and threads.threads_for(threads.LARGE, allotted=3) == 3
    assert threads.stage_work("teacher", 8, 256) == threads.LARGE == threads.stage_work("classify-features", 11, 64)
    assert threads.stage_work("train", 8, 256) == 256 * 2**8
    monkeypatch.setenv("QELM_CORES", "6")
    assert threads.cores() == 6 and threads.split(2) == 3 and threads.split(4) == 1 and threads.split(12) == 1
    assert threads.threads_for(threads.LARGE) == 6
    monkeypatch.setenv("QELM_THREADS", "3")  # the override wins over the rule, whatever the work
    assert threads.threads_for(0) == 3 == threads.threads_for(threads.LARGE)
    assert threads.use(0) == 3 and torch.get_num_threads() == 3


def test_allotment_reaches_child_processes(monkeypatch):
    assert threads.child_env(2) == {"QELM_CORES": "2", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    threads.allot(1)
    import os

    assert os.environ["QELM_CORES"] == os.environ["OMP_NUM_THREADS"] == "1" and threads.cores() == 1


@pytest.mark.parametrize("name", ["QELM_THREADS", "QELM_CORES"])
@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_bad_thread_variables_are_one_config_error(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        threads.threads_for(0)
    message = str(err.value)
    assert message.startswith(f"{name}={value!r}") and "whole number >= 1" in message and "\n" not in message


def test_qelm_refuses_a_bad_override_in_one_line(monkeypatch):
    monkeypatch.setenv("QELM_THREADS", "many")
    result = CliRunner().invoke(app, ["prepare", "--params", str(REPO / "params.yaml")])
    assert result.exit_code == 2 and "QELM_THREADS='many'" in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


def test_training_workers_split_the_cores(monkeypatch):
    """train_all hands each spawned worker cores // workers."""
    from qelm_core.lm import distill

    monkeypatch.setenv("QELM_CORES", "3")
    monkeypatch.delenv("QELM_TRAIN_WORKERS", raising=False)
    seen = {}

    class Pool:  # records what the pool would start, runs nothing
        def __init__(self, workers, mp_context, initializer, initargs):
            seen.update(workers=workers, initializer=initializer, initargs=initargs)

        def submit(self, fn, *args):
            raise KeyboardInterrupt  # stop before any training

        def shutdown(self, **kwargs):
            pass

    monkeypatch.setattr("concurrent.futures.ProcessPoolExecutor", Pool)
    from qelm_core.config import parse_params

    with pytest.raises(KeyboardInterrupt):
        distill.train_all(REPO, parse_params({}), [("student", "quantum", 0)] * 3, REPO / "x", {}, workers=3)
    assert seen == {"workers": 3, "initializer": distill._worker_init, "initargs": (1,)}


def test_dask_workers_get_their_share(monkeypatch):
    import flows.runner

    monkeypatch.setenv("QELM_CORES", "4")
    monkeypatch.setattr(flows.runner, "prefect_env", lambda: {"PREFECT_API_URL": "http://x"})
    runner = flows.runner.dask_runner(n_workers=2)
    env = runner.cluster_kwargs["env"]
    assert env["QELM_CORES"] == env["OMP_NUM_THREADS"] == "2" and env["QELM_TRAIN_WORKERS"] == "1"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_freed_memory_is_kept_instead_of_faulted_back():
    """A training step's temporaries, freed and allocated again, fault their pages back in every step by
    default; after keep_freed_memory they reuse the same pages (n = 8: ~1.5 k faults a step -> 0; n = 12:
    20-65 k -> 0)."""
    code = """
import resource, sys, torch
from qelm_core import threads
from qelm_core.config import Params
from qelm_core.lm.student import build_student
if sys.argv[1] == "keep":
    threads.keep_freed_memory()
else:  # glibc's starting mmap threshold, held: its dynamic raise (on the first free of a mapped block) came
    import ctypes  # early in some runs and not in others, so "default" alone faulted 0 or ~1.5 k pages a step
    ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
torch.set_num_threads(1)
model = build_student(Params())
optimizer = torch.optim.Adam(model.parameters())
contexts, targets = torch.randint(0, 256, (256, 2)), torch.randint(0, 256, (256,))
def step():
    loss = torch.nn.functional.nll_loss(model(contexts), targets)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
for _ in range(3):
    step()
faults = []
for _ in range(11):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(sorted(faults)[5])
"""
    # the median step: a step in which the kernel reclaimed pages of the process (e.g. DAMON) faults them
    # back in whatever the allocator does
    faults = {mode: int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                                       check=True, cwd=REPO).stdout) for mode in ("default", "keep")}
    assert faults["default"] > 200 and faults["keep"] < faults["default"] / 20, faults
