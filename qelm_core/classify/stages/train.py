"""Stage classify-train: per dataset and seed, the quantum student, the MLP and logistic regression,
trained with the same loss, data, optimiser and epochs; the best-validation weights are saved. Each fit
checkpoints every epoch under classify/checkpoints: killed and rerun, the stage resumes where it was."""
from __future__ import annotations

from qelm_core import tracking
from qelm_core.classify.config import ClassifyParams, ClassifyPaths
from qelm_core.classify.models import KINDS, build_model, param_counts, save_model
from qelm_core.classify.teacher import standardiser
from qelm_core.classify.train import fit, fit_key, student_inputs
from qelm_core.io import atomic_dir, atomic_write_json
from qelm_core.weights import tree_digest


def run(params: ClassifyParams, paths: ClassifyPaths) -> dict:
    tracking.configure(paths)  # fail fast on an unreachable tracking server, before any training
    metrics: dict = {}
    run = tracking.pipeline_run(paths, params, "classify-train", experiment=tracking.CLASSIFY_EXPERIMENT)
    with run as run_id, atomic_dir(paths.models) as tmp:
        for name in params.datasets:
            prep, data = student_inputs(params, paths, name)
            mean, std = standardiser(data["train"].x.numpy())
            d = data["train"].x.shape[1]
            for seed in params.seeds:
                for kind in KINDS:
                    model = build_model(kind, d, prep.n_classes, params.student, mean, std, seed)
                    tag = f"{name}.{kind}.s{seed}"
                    key = fit_key({"dataset": name, "kind": kind, "seed": seed, "student": params.student.model_dump(),
                                   "train": params.train.model_dump()}, data["train"], data["val"])
                    result = fit(model, data["train"], data["val"], params.train, seed,
                                 on_epoch=lambda row, t=tag: tracking.log_metrics(
                                     {f"{t}.val_accuracy": row["val_accuracy"], f"{t}.train_loss": row["train_loss"]},
                                     step=row["epoch"]),
                                 checkpoint=paths.checkpoints / f"{tag}.safetensors", key=key)  # a rerun resumes
                    folder = tmp / name / f"seed{seed}" / kind
                    save_model(model, folder, {"dataset": name, "seed": seed, "labels": prep.labels,
                                               "features": params.student.features,
                                               "feature_settings": params.features.model_dump()})
                    metrics.setdefault(name, {}).setdefault(kind, {})[f"seed{seed}"] = {
                        "seconds": round(result.seconds, 2), "epochs": result.epochs, "best_epoch": result.best_epoch,
                        "val_accuracy": result.best_val_accuracy, **{f"params_{k}": v for k, v in param_counts(model).items()},
                        "bytes": (folder / "model.safetensors").stat().st_size}
                    tracking.log_metrics({f"{tag}.best_val_accuracy": result.best_val_accuracy,
                                          f"{tag}.train_seconds": result.seconds})
        metrics["mlflow_run_id"] = run_id
        # how evaluate and register find this run: the models' digest, not a run id inside them
        tracking.tag_run(run_id, {tracking.MODEL_TAG: tree_digest(tmp)})
    atomic_write_json(paths.metrics / "classify_train.json", metrics)
    return metrics
