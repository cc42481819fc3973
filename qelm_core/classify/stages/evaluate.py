"""Stage classify-evaluate: every student beside the teacher, logistic regression and the majority class,
exact and on a noisy fake IBM backend; mean ± sd over seeds -> metrics/classify_eval.json + the table."""
from __future__ import annotations

import json

from qelm_core import tracking
from qelm_core.classify.config import ClassifyParams, ClassifyPaths
from qelm_core.classify.evaluate import evaluate_dataset, results_table
from qelm_core.plots import accuracy_bars
from qelm_core.io import atomic_write_json, atomic_write_text
from qelm_core.weights import tree_digest


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
    with tracking.pipeline_run(paths, params, "classify-evaluate", tree_digest(paths.models), tracking.CLASSIFY_EXPERIMENT):
        for name, ds in result["datasets"].items():
            for key, s in ds["summary"].items():
                tracking.log_metrics(s, prefix=f"{name}.{key}.")
        tracking.log_artifact(chart, "plots")
        tracking.log_artifact(paths.reports / "classify_results.md", "reports")
        tracking.log_artifact(paths.reports / "classify_per_seed.json", "reports")
    atomic_write_json(paths.metrics / "classify_eval.json", result)
    return result
