"""The shared training loop (qelm_core/training.py) on a tiny softmax regression: the KD loss, gradients
reaching every parameter, the best weights restored, early stop, and exact resume after a kill for a
float score (lower is better) and a tuple score (the classifier's (-accuracy, CE))."""
import pytest
import torch
import torch.nn.functional as F

from qelm_core.training import checkpoint_state, fit, kd_loss

D, C, N = 4, 3, 96


def test_kd_loss_is_ce_at_alpha_zero_and_zero_kl_for_the_teacher_itself():
    logp = torch.log_softmax(torch.randn(5, 8), dim=1)
    y = torch.randint(0, 8, (5,))
    assert torch.allclose(kd_loss(logp, logp.exp(), y, 0.0, 2.0), torch.nn.functional.nll_loss(logp, y))
    assert kd_loss(logp, logp.exp(), y, 1.0, 2.0).item() == pytest.approx(0.0, abs=1e-6)


def problem(seed: int = 0):
    """x (N, D), a teacher's probabilities (N, C) from a random linear map, labels that disagree with it
    on some examples; a validation split drawn the same way."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, C, generator=g)
    x, xv = torch.randn(N, D, generator=g), torch.randn(N // 2, D, generator=g)
    y, yv = (x @ w + torch.randn(N, C, generator=g)).argmax(1), (xv @ w).argmax(1)
    return x, torch.softmax(x @ w, dim=1), y, xv, yv


def model(log_probs: bool):
    torch.manual_seed(0)
    linear = torch.nn.Linear(D, C)
    return torch.nn.Sequential(linear, torch.nn.LogSoftmax(dim=-1)) if log_probs else linear


def loop(score: str):
    """-> (batch_at, validate, fit's keywords) for a float score (val NLL) or a tuple one (-accuracy, CE)."""
    x, teacher_p, y, xv, yv = problem()

    def batch_at(step):
        idx = torch.randint(0, N, (16,), generator=torch.Generator().manual_seed(step))  # (B,)
        return x[idx], teacher_p[idx], y[idx]

    def validate(m):
        with torch.no_grad():
            logp = F.log_softmax(m(xv), dim=-1)
        nll = float(F.nll_loss(logp, yv))
        acc = float((logp.argmax(1) == yv).float().mean())
        return (nll if score == "float" else (-acc, nll)), {"val_nll": nll, "val_accuracy": acc}

    kw = dict(steps=40, eval_every=10, checkpoint_every=10, lr=0.1, alpha=0.5, temperature=2.0)
    if score == "tuple":  # the classifier's settings: logits, mean train loss, checkpoints off eval steps
        kw.update(logits=True, train_loss="mean", checkpoint_every=5, patience=3)
    else:
        kw.update(schedule="cosine")
    return batch_at, validate, kw


def test_gradients_reach_every_parameter_and_the_best_weights_are_restored():
    batch_at, validate, kw = loop("float")
    m = model(log_probs=True)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    initial = validate(m)[0]
    result = fit(m, batch_at, validate, **kw)  # no checkpoint: the best weights are kept in memory
    assert all(not torch.equal(before[k], v) for k, v in m.state_dict().items())
    scores = [h["val_nll"] for h in result.history]
    assert [h["step"] for h in result.history] == [10, 20, 30, 40] and result.steps == 40
    assert validate(m)[0] == result.best_score == min(scores) < initial
    assert result.best_step == result.history[scores.index(min(scores))]["step"]


def test_a_logits_model_trains_as_the_same_model_ending_in_log_softmax():
    batch_at, validate, kw = loop("float")
    logits, log_probs = model(log_probs=False), model(log_probs=True)
    fit(logits, batch_at, validate, **kw, logits=True)
    fit(log_probs, batch_at, validate, **kw)
    for a, b in zip(logits.parameters(), log_probs.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("score", ["float", "tuple"])
@pytest.mark.parametrize("kill_at", [20, 30])
def test_a_killed_fit_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path, score, kill_at):
    batch_at, validate, kw = loop(score)
    reference = model(log_probs=score == "float")
    expected = fit(reference, batch_at, validate, **kw)

    class Killed(Exception):
        pass

    def kill(row):
        if row["step"] == kill_at:
            raise Killed  # after the checkpoint before kill_at, before kill_at's own
    path = tmp_path / "fit.safetensors"
    with pytest.raises(Killed):
        fit(model(log_probs=score == "float"), batch_at, validate, checkpoint=path, key="k", on_eval=kill, **kw)
    assert checkpoint_state(path)["step"] == kill_at - (5 if score == "tuple" else 10)
    resumed = model(log_probs=score == "float")
    result = fit(resumed, batch_at, validate, checkpoint=path, key="k", **kw)
    assert result.history == expected.history and result.steps == expected.steps
    assert (result.best_step, result.best_score) == (expected.best_step, list(expected.best_score)
                                                     if score == "tuple" else expected.best_score)
    for (name, a), (_, b) in zip(reference.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), name
    again = fit(model(log_probs=score == "float"), batch_at, validate, checkpoint=path, key="k", **kw)
    assert again.history == expected.history  # a finished fit is not trained further
    fresh = []  # another run's checkpoint is ignored: trained from step 1
    fit(model(log_probs=score == "float"), batch_at, validate, checkpoint=path, key="other",
        on_eval=lambda row: fresh.append(row["step"]), **kw)
    assert fresh[0] == 10


def test_early_stop_after_patience_evaluations_without_a_better_score(tmp_path):
    batch_at, validate, kw = loop("float")
    scores = iter([3.0, 2.0, 2.5, 2.0, 1.0])  # better, better, worse, equal (not better): stop at 40

    def scripted(m):
        s = next(scores)
        return s, {"val": s}
    result = fit(model(log_probs=True), batch_at, scripted, **{**kw, "steps": 50, "patience": 2},
                 checkpoint=tmp_path / "c.safetensors", key="k")
    assert result.steps == 40 and result.best_step == 20 and [h["val"] for h in result.history] == [3.0, 2.0, 2.5, 2.0]
    rerun = fit(model(log_probs=True), batch_at, scripted, **{**kw, "steps": 50, "patience": 2},
                checkpoint=tmp_path / "c.safetensors", key="k")
    assert rerun.steps == 40 and rerun.history == result.history  # the stopped run stays stopped
