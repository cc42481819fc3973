"""Distillation does what it claims: with alpha > 0 the student's predictions move toward the teacher's
(which here disagrees with the labels on a quarter of the data) compared with alpha = 0."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qelm_core.classify.config import StudentParams, TrainParams
from qelm_core.classify.models import build_model
from qelm_core.classify.teacher import fit_teacher_head, standardiser
from qelm_core.classify.train import SplitTensors, fit, predict_logits


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _fixed_split(seed=0, n_train=240, n_val=80, n_test=200, d=8):
    """Labels from one direction u, teacher logits from another direction v (~25 % disagreement)."""
    rng = np.random.default_rng(seed)
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    w = rng.normal(size=d)
    w -= (w @ u) * u
    w /= np.linalg.norm(w)
    v = math.cos(math.pi / 4) * u + math.sin(math.pi / 4) * w  # 45 degrees apart -> 25 % disagreement
    out = {}
    for name, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        x = rng.normal(size=(n, d)).astype(np.float32)
        y = (x @ u > 0).astype(np.int64)
        s = 3.0 * (x @ v)
        out[name] = SplitTensors.of(x, y, np.stack([-s / 2, s / 2], 1))
    return out


def _teacher_distance(model, split, temperature):
    logits = predict_logits(model, split.x)
    agree = float((logits.argmax(1) == split.teacher_logits.argmax(1)).float().mean())
    t = F.log_softmax(split.teacher_logits / temperature, -1)
    s = F.log_softmax(logits / temperature, -1)
    return agree, float((t.exp() * (t - s)).sum(1).mean())


@pytest.mark.parametrize("kind", ["quantum", "mlp"])
def test_alpha_pulls_the_student_toward_the_teacher(kind):
    data = _fixed_split()
    assert 0.15 < float((data["test"].y != data["test"].teacher_logits.argmax(1)).float().mean()) < 0.35
    mean, std = standardiser(data["train"].x.numpy())
    sp = StudentParams(n_qubits=4, layers=2)
    results = {}
    for alpha in (0.0, 0.5, 0.9):
        tp = TrainParams(alpha=alpha, temperature=2.0, lr=0.05, epochs=8, batch_size=32)
        model = build_model(kind, 8, 2, sp, mean, std, seed=0)
        fit(model, data["train"], data["val"], tp, seed=0)
        results[alpha] = _teacher_distance(model, data["test"], tp.temperature)  # (agreement, KL) on test
    # soft predictions move toward the teacher's for every alpha > 0 (KL on held-out data); with a large
    # alpha the hard predictions follow the teacher too (the default 0.5 balances teacher and labels)
    assert results[0.5][1] < 0.75 * results[0.0][1], results
    assert results[0.9][1] < 0.75 * results[0.0][1], results
    assert results[0.9][0] > results[0.0][0] + 0.05, results


def test_teacher_head_fits_a_linear_problem_and_prefers_more_l2_on_ties():
    data = _fixed_split(seed=1)
    x, y = data["train"].x.numpy(), data["train"].y.numpy()
    head, scores = fit_teacher_head(x, y, data["val"].x.numpy(), data["val"].y.numpy(), 2, [1e-4, 1e-2], 100)
    assert set(scores) == {1e-4, 1e-2} and head.l2 == max(scores, key=lambda k: (scores[k], k))
    assert float((head.logits(data["test"].x.numpy()).argmax(1) == data["test"].y.numpy()).mean()) > 0.9


@pytest.mark.parametrize("kill_epoch", [3, 5])  # 3: the best epoch is still ahead; 5: it may be behind (on disk)
def test_killed_fit_resumes_to_the_same_weights(tmp_path, kill_epoch):
    """The classifier's loop (the LM's, qelm_core/training.py) checkpoints every epoch: killed after epoch k and
    rerun with the same key, it continues at k + 1 and ends with the weights of an uninterrupted fit;
    a checkpoint under another key is ignored."""
    from qelm_core.classify.train import fit_key
    from qelm_core.training import checkpoint_state

    data = _fixed_split()
    mean, std = standardiser(data["train"].x.numpy())
    sp, tp = StudentParams(n_qubits=4, layers=2), TrainParams(alpha=0.5, temperature=2.0, lr=0.05, epochs=6, batch_size=32)
    key = fit_key({"kind": "quantum", "seed": 0}, data["train"], data["val"])
    assert key != fit_key({"kind": "quantum", "seed": 1}, data["train"], data["val"])

    def model():
        return build_model("quantum", 8, 2, sp, mean, std, seed=0)

    reference = model()
    expected = fit(reference, data["train"], data["val"], tp, seed=0)

    class Killed(Exception):
        pass

    def kill(row):
        if row["epoch"] == kill_epoch + 1:
            raise Killed  # after epoch k's checkpoint, before epoch k + 1's
    path = tmp_path / "fit.safetensors"
    with pytest.raises(Killed):
        fit(model(), data["train"], data["val"], tp, seed=0, on_epoch=kill, checkpoint=path, key=key)
    assert checkpoint_state(path)["step"] == kill_epoch * math.ceil(240 / 32)  # one step a minibatch
    resumed = model()
    seen = []
    result = fit(resumed, data["train"], data["val"], tp, seed=0, on_epoch=lambda r: seen.append(r["epoch"]),
                 checkpoint=path, key=key)
    assert seen == list(range(kill_epoch + 1, 7)) and result.epochs == expected.epochs == 6
    assert (result.best_epoch, result.best_val_accuracy) == (expected.best_epoch, expected.best_val_accuracy)
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a, b, atol=1e-6), name

    other = []  # another fit's checkpoint: trained from scratch
    fit(model(), data["train"], data["val"], tp, seed=0, on_epoch=lambda r: other.append(r["epoch"]),
        checkpoint=path, key="another")
    assert other == list(range(1, 7))
