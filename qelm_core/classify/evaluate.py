"""Classification metrics, the noisy-hardware run, the seed aggregate and the results table.

Every model is scored on the same test split: accuracy, macro-F1 (the unweighted mean of per-class
F1; a class never predicted has F1 0) and agreement with the teacher's argmax. Seeds are aggregated
as mean and sample standard deviation (ddof = 1); the teacher and the majority class are deterministic.
The quantum student is scored
  exact   on the whole test split with the exact statevector (fused engine, complex128); on the noisy
          subset the same weights also run on PennyLane default.qubit, and the largest logit difference
          is reported (`fused_vs_default_qubit_max_abs`),
  noisy   on `evaluate.noisy_examples` test examples (classes in turn, the same for every seed) on a fake
          IBM backend (noise model of the device, `shots` samples per <Z_q>), beside the exact score of
          the same examples.
"""
from __future__ import annotations

import numpy as np
import torch

from qelm_core.classify.config import ClassifyParams, ClassifyPaths

# rows of the results table, in order: (metric key prefix, label)
ROWS = (("teacher", "teacher: SmolLM2-135M layer-{layer} states + linear head"),
        ("quantum_exact", "quantum student, exact simulator"),
        ("quantum_noisy", "quantum student, {backend} ({shots} shots), {k} test examples"),
        ("quantum_exact_subset", "quantum student, exact, same {k} examples"),
        ("mlp", "classical MLP student ({features} -> {h} tanh -> C)"),
        ("logreg", "logistic regression ({features})"),
        ("majority", "majority class"))


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(y, pred)) if len(y) else float("nan")


def macro_f1(pred: np.ndarray, y: np.ndarray, n_classes: int) -> float:
    """Unweighted mean of per-class F1 over all n_classes (a class never predicted nor present scores 0)."""
    from sklearn.metrics import f1_score

    return float(f1_score(y, pred, labels=list(range(n_classes)), average="macro", zero_division=0.0))


def scores(logits_or_pred: np.ndarray, y: np.ndarray, n_classes: int, teacher_pred: np.ndarray | None = None) -> dict:
    pred = np.asarray(logits_or_pred)
    pred = pred.argmax(1) if pred.ndim == 2 else pred
    out = {"accuracy": accuracy(pred, y), "macro_f1": macro_f1(pred, y, n_classes)}
    if teacher_pred is not None:
        out["agree_teacher"] = accuracy(pred, teacher_pred)
    return out


def noisy_subset_indices(y: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k test examples, classes taken in turn (as balanced as k allows), the same for every seed."""
    from itertools import zip_longest

    rng = np.random.default_rng(seed)
    groups = [rng.permutation(np.flatnonzero(np.asarray(y) == c)) for c in np.unique(y)]
    order = [int(i) for row in zip_longest(*groups) for i in row if i is not None]
    return np.sort(np.asarray(order[:k], dtype=np.int64))


@torch.no_grad()
def quantum_on_device(model, x: np.ndarray, device_params, shots: int | None, seed: int) -> np.ndarray:
    """The trained weights run on a PennyLane device: (N, d) -> (N, C) logits (float64)."""
    from qelm_core.classify.models import z_qnode
    from qelm_core.quantum.devices import make_device

    dev = make_device(device_params, model.n_qubits, shots=shots, seed=seed)
    circuit = z_qnode(model.spec, dev, shots=shots)
    z = model.expvals(torch.as_tensor(x, dtype=torch.float32), circuit=circuit)  # (N, n)
    return model.head(z.float()).double().numpy()


@torch.no_grad()
def exact_logits(model, x: np.ndarray) -> np.ndarray:
    """Exact statevector logits: the fused engine in complex128 (pinned to default.qubit by tests)."""
    from qelm_core.quantum.fused import compile_fused

    exact = compile_fused(model.spec, dtype=torch.complex128, readout="z")
    xt = torch.as_tensor(x, dtype=torch.float32)
    z = torch.cat([model.expvals(xt[i: i + 1024], circuit=exact) for i in range(0, len(xt), 1024)])
    return model.head(z.float()).double().numpy()


def aggregate(per_seed: list[dict]) -> dict:
    """[{metric: value}] over seeds -> {metric_mean, metric_std, ...} (std with ddof=1; 0 for one seed)."""
    out = {}
    for key in per_seed[0]:
        vals = np.asarray([row[key] for row in per_seed], dtype=np.float64)
        out[f"{key}_mean"] = float(vals.mean())
        out[f"{key}_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
    return out


def _seedless(values: dict) -> dict:
    return {**{f"{k}_mean": v for k, v in values.items()}, **{f"{k}_std": 0.0 for k in values}}


def evaluate_dataset(params: ClassifyParams, paths: ClassifyPaths, name: str, train_metrics: dict) -> dict:
    """Every model of dataset `name` on its test split, per seed and aggregated (see the module docstring)."""
    from qelm_core.classify.models import KINDS, load_model
    from qelm_core.classify.train import student_inputs
    from qelm_core.config import DeviceParams
    from qelm_core.quantum.devices import fake_hardware

    ep = params.evaluate
    prep, data = student_inputs(params, paths, name)
    test, y, C = data["test"], prep.y["test"], prep.n_classes
    x = test.x.numpy()
    teacher_pred = test.teacher_logits.numpy().argmax(1)
    majority = int(np.bincount(prep.y["train"], minlength=C).argmax())
    sub = noisy_subset_indices(y, ep.noisy_examples, params.split.seed)
    per_seed, params_info = [], {}
    for seed in params.seeds:
        row: dict = {"seed": seed}
        for kind in KINDS:
            model, cfg = load_model(paths.model_dir(name, seed, kind))
            key = "quantum_exact" if kind == "quantum" else kind
            logits = exact_logits(model, x) if kind == "quantum" else model(test.x).detach().numpy()
            trained = train_metrics[name][kind][f"seed{seed}"]  # timings live in metrics, not in the cached model
            row[key] = {**scores(logits, y, C, teacher_pred), "train_seconds": trained["seconds"]}
            params_info[kind] = {**cfg["param_counts"], "bytes": trained["bytes"]}
            if kind == "mlp":
                params_info["mlp_hidden"] = cfg["hidden"]
            if kind == "quantum" and len(sub):
                noisy = quantum_on_device(model, x[sub], fake_hardware(ep.noisy_backend), ep.shots, seed)
                reference = quantum_on_device(model, x[sub], DeviceParams(), None, seed)  # PennyLane default.qubit
                row["quantum_noisy"] = scores(noisy, y[sub], C, teacher_pred[sub])
                row["quantum_exact_subset"] = scores(logits[sub], y[sub], C, teacher_pred[sub])
                row["fused_vs_default_qubit_max_abs"] = float(np.abs(reference - logits[sub]).max())
        per_seed.append(row)
    keys = [k for k in per_seed[0] if isinstance(per_seed[0][k], dict)]
    summary = {k: aggregate([r[k] for r in per_seed]) for k in keys}
    summary["teacher"] = _seedless(scores(teacher_pred, y, C))  # deterministic: the same for every seed
    summary["majority"] = _seedless(scores(np.full_like(y, majority), y, C, teacher_pred))
    mlp_hidden = params_info.pop("mlp_hidden", None)
    return {"n_classes": C, "labels": prep.labels, "n_test": int(len(y)), "n_noisy": int(len(sub)),
            "majority_share": float(np.mean(y == majority)), "mlp_hidden": mlp_hidden, "params": params_info,
            "fused_vs_default_qubit_max_abs": max((r.get("fused_vs_default_qubit_max_abs", 0.0) for r in per_seed)),
            "summary": summary, "per_seed": per_seed}


def _pm(summary: dict, key: str, digits: int = 3) -> str:
    mean, std = summary.get(f"{key}_mean"), summary.get(f"{key}_std")
    if mean is None:
        return "-"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def results_table(result: dict, ctx: dict) -> str:
    """Markdown: one section per dataset, one row per model (mean ± sd over seeds)."""
    lines = []
    for name, ds in result["datasets"].items():
        lines += [f"**{name}** ({ds['n_classes']} classes; test n = {ds['n_test']}; "
                  f"majority share {ds['majority_share']:.3f}; seeds {ctx['seeds']})", "",
                  "| model | accuracy | macro-F1 | agrees w/ teacher | params (classical + circuit) | bytes | train s |",
                  "|---|---|---|---|---|---|---|"]
        for key, label in ROWS:
            s = ds["summary"].get(key)
            if not s:
                continue
            text = label.format(layer=ctx["layer"], backend=ctx["backend"], shots=ctx["shots"], k=ds.get("n_noisy", 0),
                                features=ctx["features"], h=ds.get("mlp_hidden", "?"))
            p = ds["params"].get(key.split("_")[0] if key.startswith("quantum") else key, {})
            params = f"{p['classical']:,} + {p['circuit']:,}" if p else "-"
            agree = _pm(s, "agree_teacher") if "agree_teacher_mean" in s else "-"
            seconds = _pm(s, "train_seconds", 1) if "train_seconds_mean" in s else "-"
            nbytes = f"{p['bytes']:,}" if p.get("bytes") else "-"
            lines.append(f"| {text} | {_pm(s, 'accuracy')} | {_pm(s, 'macro_f1')} | {agree} | {params} | {nbytes} | {seconds} |")
        lines.append("")
    return "\n".join(lines)
