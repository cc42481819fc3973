import math

import numpy as np
import pytest
import torch

from qelm_core.config import parse_params
from qelm_core.lm.data import contexts
from qelm_core.lm.distill import SplitData, train
from qelm_core.lm.student import build_student
from qelm_core.training import checkpoint_state, load_checkpoint, lr_schedule


def markov_data(n_tokens: int, V: int, seed: int):
    """A sequence from a known Markov chain; the 'teacher' returns its true next-token distribution."""
    rng = np.random.default_rng(seed)
    table = rng.dirichlet(np.full(V, 0.3), size=V)  # (V, V) peaked rows
    seq = [0]
    for _ in range(n_tokens - 1):
        seq.append(rng.choice(V, p=table[seq[-1]]))
    seq = np.array(seq)
    data = SplitData(torch.from_numpy(contexts(seq, 1)), torch.from_numpy(seq[1:]),
                     torch.from_numpy(table[seq[:-1]]).to(torch.float16))
    return data, table


def tiny_params(**train):
    return parse_params({"student": {"n_qubits": 3, "context": 1, "layers": 2},
                         "train": {"steps": 40, "batch_size": 32, "eval_every": 10, "checkpoint_every": 10,
                                   "lr": 0.05, **train}})


def test_distillation_brings_the_student_closer_to_the_teacher(tmp_path):
    train_data, table = markov_data(120, 8, seed=0)  # few samples: CE alone overfits the counts
    val_data, _ = markov_data(400, 8, seed=1)
    kl = {}
    for alpha in (0.0, 0.9):
        params = tiny_params(alpha=alpha, temperature=1.0, steps=150)
        model = build_student(params)
        train(model, train_data, val_data, params.train, 0, tmp_path / f"a{alpha}.safetensors", f"a{alpha}")
        with torch.no_grad():
            student = model(torch.arange(8)[:, None]).exp().double().numpy()
        kl[alpha] = float((table * np.log(table / student)).sum(1).mean())
    assert kl[0.9] < kl[0.0]


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_killed_training_resumes_to_the_same_weights(tmp_path, schedule):
    train_data, _ = markov_data(300, 8, seed=0)
    val_data, _ = markov_data(100, 8, seed=1)
    params = tiny_params(schedule=schedule)

    reference = build_student(params)
    train(reference, train_data, val_data, params.train, 0, tmp_path / "ref.safetensors", "k")

    class Killed(Exception):
        pass

    def kill_at(row):
        if row["step"] == 30:
            raise Killed  # after the step-20 checkpoint, before the step-30 one
    interrupted = build_student(params)
    with pytest.raises(Killed):
        train(interrupted, train_data, val_data, params.train, 0, tmp_path / "run.safetensors", "k", on_eval=kill_at)
    assert load_checkpoint(tmp_path / "run.safetensors", build_student(params),
                           torch.optim.Adam(build_student(params).parameters()))["step"] == 20
    resumed = build_student(params)
    result = train(resumed, train_data, val_data, params.train, 0, tmp_path / "run.safetensors", "k")
    assert result.steps == 40 and [h["step"] for h in result.history] == [10, 20, 30, 40]
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_a_checkpoint_of_another_run_is_not_resumed(tmp_path):
    train_data, _ = markov_data(200, 8, seed=0)
    params = tiny_params(steps=20)
    first = build_student(params)
    train(first, train_data, train_data, params.train, 0, tmp_path / "c.safetensors", "run-a")
    other = build_student(params)
    result = train(other, train_data, train_data, params.train, 0, tmp_path / "c.safetensors", "run-b")
    assert result.steps == 20 and len(result.history) == 2 and math.isfinite(result.best_val_ppl)
    alone = build_student(params)
    train(alone, train_data, train_data, params.train, 0, tmp_path / "alone.safetensors", "run-b")
    for a, b in zip(other.parameters(), alone.parameters()):  # same as a run that never saw run-a
        assert torch.allclose(a, b, atol=1e-6)


def test_cosine_schedule_decays_to_zero_and_its_state_is_checkpointed(tmp_path):
    train_data, _ = markov_data(200, 8, seed=0)
    params = tiny_params(schedule="cosine", steps=20)
    model = build_student(params)
    train(model, train_data, train_data, params.train, 0, tmp_path / "c.safetensors", "k")
    state = checkpoint_state(tmp_path / "c.safetensors")
    assert state["scheduler"]["last_epoch"] == 20 and state["scheduler"]["_last_lr"][0] == pytest.approx(0, abs=1e-12)
    opt = torch.optim.Adam(build_student(params).parameters(), lr=0.05)
    sched = lr_schedule(opt, params.train.schedule, params.train.steps)
    lrs = [opt.param_groups[0]["lr"]]
    for _ in range(20):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == 0.05 and lrs[10] == pytest.approx(0.025) and all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lr_schedule(opt, "constant", 20) is None


def test_train_workers_default_and_override(monkeypatch):
    from qelm_core.config import ConfigError
    from qelm_core.lm.distill import train_workers

    monkeypatch.delenv("QELM_TRAIN_WORKERS", raising=False)
    for cores in ("2", "16"):  # one worker per seed whatever the cores (each gets cores // workers threads)
        monkeypatch.setenv("QELM_CORES", cores)
        assert train_workers(6, seeds=3) == 3 and train_workers(2, seeds=3) == 2 and train_workers(2, seeds=1) == 1
    monkeypatch.delenv("QELM_CORES")
    monkeypatch.setenv("QELM_TRAIN_WORKERS", "1")
    assert train_workers(6) == 1
    monkeypatch.setenv("QELM_TRAIN_WORKERS", "two")
    with pytest.raises(ConfigError, match="QELM_TRAIN_WORKERS='two'"):
        train_workers(6)
