"""Stage train: the quantum student and its equal-parameter classical twin, same loop, loss and data."""
from __future__ import annotations

import json

import torch

from qelm_core import tracking
from qelm_core.circuits import draw_circuit_png
from qelm_core.config import Params, Paths
from qelm_core.distill import load_distill_data, run_key, train, write_history_csv
from qelm_core.io import atomic_write_json
from qelm_core.plots import training_curve
from qelm_core.progress import progress_bar
from qelm_core.student import build_student, param_counts, save_student


def run(params: Params, paths: Paths) -> dict:
    tracking.configure(paths)  # fail fast on an unreachable tracking server, before any training
    data, vocab, ids = load_distill_data(paths, params.student.context)
    counts = torch.tensor(vocab.counts, dtype=torch.float64)
    classical = params.model_copy(update={"student": params.student.model_copy(update={"kind": "classical"})})
    models = {"student": build_student(params, counts), "classical": build_student(classical, counts)}
    teacher_metrics = json.loads((paths.metrics / "teacher.json").read_text())
    metrics: dict = {}
    with tracking.pipeline_run(paths, params, stage="train") as run_id, progress_bar() as bar:
        tracking.log_metrics(teacher_metrics, prefix="")
        tracking.log_dataset("prepared-test", data["test"].targets.numpy(), str(paths.prepared),
                             tracking.dvc_out_hashes(paths).get("data/prepared", vocab.digest()), "test")
        results = {}
        for name, model in models.items():
            key = run_key({"model": name, "params": params.model_dump(exclude={"evaluate", "registry"}),
                           "vocab": vocab.digest(), "n_train": len(data["train"].targets)})
            results[name] = train(model, data["train"], data["val"], params.train, params.seed,
                                  paths.checkpoints / f"{name}.safetensors", key, progress=bar,
                                  on_eval=lambda row, n=name: tracking.log_metrics(
                                      {f"{n}_val_ppl": row["val_ppl"], f"{n}_train_loss": row["train_loss"]},
                                      step=row["step"]))
            save_student(model, paths.root / "models" / name, {"vocab": vocab.to_json(), "run_id": run_id})
            r, counts_ = results[name], param_counts(model)
            metrics.update({f"{name}_val_ppl": r.best_val_ppl, f"{name}_train_loss": r.final_train_loss,
                            f"{name}_steps": r.steps, f"{name}_seconds": round(r.seconds, 2),
                            f"{name}_samples_per_s": round(r.samples_per_s, 1),
                            **{f"{name}_params_{k}": v for k, v in counts_.items()}})
        metrics["mlflow_run_id"] = run_id
        curve = training_curve(paths.plots / "train_curve.png", {k: v.history for k, v in results.items()},
                               {"unigram (test)": teacher_metrics["ppl_unigram"],
                                "teacher (val)": teacher_metrics["ppl_teacher_val"]})
        write_history_csv(paths.plots / "train_curve.csv", results["student"].history, results["classical"].history)
        if params.student.kind == "quantum":
            tracking.log_artifact(draw_circuit_png(models["student"].spec, paths.plots / "circuit.png"), "plots")
        tracking.log_artifact(curve, "plots")
        tracking.log_metrics(metrics)
        atomic_write_json(paths.metrics / "train.json", metrics)
    return metrics
