"""Stage classify-evaluate: every student beside the teacher, logistic regression and the majority class,
exact and on a noisy fake IBM backend; mean ± sd over seeds -> metrics/classify_eval.json + the table."""
from __future__ import annotations

import json

import numpy as np

from qelm_core import tracking
from qelm_core.classify.config import ClassifyParams, ClassifyPaths
from qelm_core.classify.evaluate import (aggregate, exact_logits, noisy_subset_indices, quantum_on_device,
                                         results_table, scores)
from qelm_core.classify.models import KINDS, load_model
from qelm_core.classify.plots import accuracy_bars
from qelm_core.classify.stages.train import student_inputs
from qelm_core.config import DeviceParams
from qelm_core.devices import fake_hardware
from qelm_core.io import atomic_write_json, atomic_write_text


def _seedless(values: dict) -> dict:
    return {**{f"{k}_mean": v for k, v in values.items()}, **{f"{k}_std": 0.0 for k in values}}


def evaluate_dataset(params: ClassifyParams, paths: ClassifyPaths, name: str, train_metrics: dict) -> dict:
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
            row[key] = {**scores(logits, y, C, teacher_pred), "train_seconds": cfg["train_seconds"]}
            params_info[kind] = {**cfg["param_counts"], "bytes": train_metrics[name][kind][f"seed{seed}"]["bytes"]}
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


def run(params: ClassifyParams, paths: ClassifyPaths) -> dict:
    train_metrics = json.loads((paths.metrics / "classify_train.json").read_text())
    teacher_metrics = json.loads((paths.metrics / "classify_teacher.json").read_text())
    features = json.loads((paths.metrics / "classify_features.json").read_text())
    result = {"datasets": {name: evaluate_dataset(params, paths, name, train_metrics) for name in params.datasets}}
    for name, ds in result["datasets"].items():
        ds["params"]["teacher"] = {"classical": features["teacher_params"]["used"] + teacher_metrics[name]["params_head"],
                                   "circuit": 0, "total_model": features["teacher_params"]["total"],
                                   "bytes": features["teacher_params"]["bytes"]}
    ctx = {"seeds": params.seeds, "layer": params.features.teacher_layer, "backend": params.evaluate.noisy_backend,
           "shots": params.evaluate.shots, "features": params.student.features}
    table = results_table(result, ctx)
    per_seed = {name: ds.pop("per_seed") for name, ds in result["datasets"].items()}
    result["settings"] = {**ctx, "n_qubits": params.student.n_qubits, "layers": params.student.layers,
                          "alpha": params.train.alpha, "temperature": params.train.temperature,
                          "epochs": params.train.epochs}
    chart = accuracy_bars(paths.plots / "classify_accuracy.png", result)
    atomic_write_text(paths.reports / "classify_results.md", table)
    atomic_write_json(paths.reports / "classify_per_seed.json", per_seed)
    with tracking.classify_run(paths, params, run_id=train_metrics["mlflow_run_id"], stage="classify-evaluate"):
        for name, ds in result["datasets"].items():
            for key, s in ds["summary"].items():
                tracking.log_metrics(s, prefix=f"{name}.{key}.")
        tracking.log_artifact(chart, "plots")
        tracking.log_artifact(paths.reports / "classify_results.md", "reports")
        tracking.log_artifact(paths.reports / "classify_per_seed.json", "reports")
    atomic_write_json(paths.metrics / "classify_eval.json", result)
    return result


if __name__ == "__main__":
    from qelm_core.classify.stages import main

    main("evaluate")
