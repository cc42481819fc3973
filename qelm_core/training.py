"""The one training loop of both pipelines: knowledge-distillation loss, Adam, evaluation, early stop,
checkpoints that resume exactly.

loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, target)
where x_T = normalise(p^(1/T)) = softmax(log p / T) -- for the Born machine this is literally
the measured probabilities sharpened/flattened, for a classical student it equals logits / T.

The loop counts steps. The batch of step s comes from `batch_at(s)`, a pure function of s (drawn
from a generator seeded with (seed, s) by the caller), so no sampler state has to be saved: weights,
Adam state, the lr schedule's state, history and best-so-far go into one safetensors file (+ JSON),
written atomically every `checkpoint_every` steps; a rerun with the same key continues after it and
ends with the weights of an uninterrupted run. The LM (qelm_core/lm/distill.py) draws a random batch per
step; the classifier (qelm_core/classify/train.py) walks epochs: eval_every = an epoch's steps.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

import torch
import torch.nn.functional as F

from qelm_core.io import atomic_write_bytes


def kd_loss(student_logp: torch.Tensor, teacher_p: torch.Tensor, targets: torch.Tensor,
            alpha: float, temperature: float) -> torch.Tensor:
    """student_logp (B, V) log-probs, teacher_p (B, V) probs, targets (B,) -> scalar loss."""
    ce = F.nll_loss(student_logp, targets)
    if alpha == 0:
        return ce
    s_t = F.log_softmax(student_logp / temperature, dim=1)
    t_t = F.log_softmax(torch.log(teacher_p.clamp_min(1e-12)) / temperature, dim=1)
    kl = (t_t.exp() * (t_t - s_t)).sum(1).mean()
    return alpha * temperature**2 * kl + (1 - alpha) * ce


def save_checkpoint(path: Path, model, optimizer, state: dict) -> None:
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for idx, slot in opt["state"].items():
        for name, value in slot.items():
            tensors[f"opt.{idx}.{name}"] = torch.as_tensor(value).detach().contiguous()
    meta = {"state": json.dumps(state), "param_groups": json.dumps(opt["param_groups"])}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def checkpoint_state(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["state"])


def load_checkpoint(path: Path, model, optimizer) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state: dict = {}
    for key, value in tensors.items():
        if key.startswith("opt."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": json.loads(meta["param_groups"])})
    return json.loads(meta["state"])


def lr_schedule(optimizer, schedule: str, steps: int):
    """None (constant lr) or the scheduler stepped once per training step: cosine from lr to 0 over `steps`."""
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    return None


@dataclass
class Fitted:
    steps: int  # steps trained (fewer than asked after an early stop)
    seconds: float  # over all runs of a resumed fit
    best_step: int
    best_score: float | list  # validate's score at best_step (a tuple comes back as a list)
    history: list[dict] = field(default_factory=list)  # per evaluation: {"step", "train_loss", **validate's row}


def fit(model, batch_at: Callable[[int], tuple], validate: Callable[[object], tuple], *, steps: int, eval_every: int,
        checkpoint_every: int, lr: float, alpha: float, temperature: float, patience: int = 0,
        schedule: str = "constant", logits: bool = False, train_loss: Literal["last", "mean"] = "last",
        checkpoint: Path | None = None, key: str = "", on_eval: Callable[[dict], None] | None = None,
        progress=None) -> Fitted:
    """Train `model` in place for `steps` steps; on return it holds the weights of its best evaluation.

    batch_at(step) -> (inputs, teacher_p (B, V) probs, targets (B,)) for step 1..steps; the model maps the
    inputs to (B, V) log-probs, or to logits with `logits`. validate(model) -> (score, row): every
    `eval_every` steps and at the last; lower scores are better (a tuple compares element by element),
    `patience` evaluations without a better one stop training (0 = never). The history row's train_loss
    is the last batch's loss, or with "mean" the mean per sample since the previous evaluation.
    `checkpoint` (+ its run's `key`): resume from it, write it every `checkpoint_every` steps and the best
    weights next to it (<stem>.best.safetensors); without one the best weights are kept in memory only.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = lr_schedule(optimizer, schedule, steps)
    state = {"key": key, "step": 0, "history": [], "best": None, "best_step": 0, "bad_evals": 0,
             "loss_sum": 0.0, "seen": 0, "seconds": 0.0, "scheduler": None}
    best_path = checkpoint.with_name(checkpoint.stem + ".best.safetensors") if checkpoint else None
    if checkpoint and _resumable(checkpoint, best_path, key):  # else: none, or another run's: start afresh
        state = load_checkpoint(checkpoint, model, optimizer)
        if scheduler is not None:
            scheduler.load_state_dict(state["scheduler"])
    best = None  # the best weights, when this process reached them; else they are in best_path
    task = progress.add_task("train", total=steps, completed=state["step"]) if progress else None
    start = time.perf_counter() - state["seconds"]

    def stopped() -> bool:  # `patience` evaluations in a row without a better score
        return bool(patience) and state["bad_evals"] >= patience

    model.train()
    while state["step"] < steps and not stopped():
        step = state["step"] + 1
        inputs, teacher_p, targets = batch_at(step)
        out = model(inputs)
        logp = F.log_softmax(out, dim=-1) if logits else out  # (B, V)
        loss = kd_loss(logp, teacher_p, targets, alpha, temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
            state["scheduler"] = scheduler.state_dict()
        state["step"] = step
        if train_loss == "mean":  # .item() waits for the device: only where the mean is reported
            state["loss_sum"] += loss.item() * len(targets)
            state["seen"] += len(targets)
        if task is not None:
            progress.advance(task)
        if step % eval_every == 0 or step == steps:
            score, values = validate(model)
            model.train()  # validate may have switched it to eval mode
            score = list(score) if isinstance(score, tuple) else score  # as it comes back from the JSON state
            reported = state["loss_sum"] / state["seen"] if train_loss == "mean" else loss.item()
            row = {"step": step, "train_loss": reported, **values}
            state.update(loss_sum=0.0, seen=0)
            state["history"].append(row)
            if on_eval:
                on_eval(row)
            if state["best"] is None or score < state["best"]:
                state.update(best=score, best_step=step, bad_evals=0)
                best = {k: v.detach().clone() for k, v in model.state_dict().items()}
                if checkpoint:
                    save_checkpoint(best_path, model, optimizer, {"step": step})
            else:
                state["bad_evals"] += 1
        if checkpoint and (step % checkpoint_every == 0 or step == steps or stopped()):
            state["seconds"] = time.perf_counter() - start
            save_checkpoint(checkpoint, model, optimizer, state)
    seconds = time.perf_counter() - start
    if best is not None:
        model.load_state_dict(best)
    else:  # resumed after the best evaluation: its weights are on disk
        load_checkpoint(best_path, model, torch.optim.Adam(model.parameters(), lr=lr))
    return Fitted(state["step"], seconds, state["best_step"], state["best"], state["history"])


def _resumable(checkpoint: Path, best_path: Path, key: str) -> bool:
    """The checkpoint exists, belongs to this run, and the best weights it refers to are on disk."""
    if not checkpoint.is_file():
        return False
    state = checkpoint_state(checkpoint)
    return state.get("key") == key and (state.get("best") is None or best_path.is_file())
