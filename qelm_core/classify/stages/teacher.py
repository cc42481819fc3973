"""Stage classify-teacher: a linear head on the teacher LLM's hidden states -> logits on every split."""
from __future__ import annotations

from safetensors.numpy import load_file, save_file

from qelm_core.classify.config import ClassifyParams, ClassifyPaths
from qelm_core.classify.data import SPLITS, load_prepared
from qelm_core.classify.evaluate import scores
from qelm_core.classify.teacher import fit_teacher_head
from qelm_core.io import atomic_dir, atomic_write_json


def run(params: ClassifyParams, paths: ClassifyPaths) -> dict:
    metrics: dict = {}
    with atomic_dir(paths.teacher) as tmp:
        for name in params.datasets:
            prep = load_prepared(paths.prepared, name)
            feats = load_file(str(paths.features / f"{name}.safetensors"))
            x = {s: feats[f"teacher.{s}"] for s in SPLITS}  # (N, d_teacher)
            head, val_scores = fit_teacher_head(x["train"], prep.y["train"], x["val"], prep.y["val"], prep.n_classes,
                                                params.teacher.l2_grid, params.teacher.max_iter)
            logits = {f"logits.{s}": head.logits(x[s]) for s in SPLITS}  # (N, C) each
            save_file({**logits, "head.weight": head.weight.astype("float32"), "head.bias": head.bias.astype("float32"),
                       "head.mean": head.mean.astype("float32"), "head.std": head.std.astype("float32")},
                      str(tmp / f"{name}.safetensors"))
            m = {"l2": head.l2, "val_accuracy_by_l2": {str(k): v for k, v in val_scores.items()},
                 "params_head": head.n_params}
            for s in SPLITS:
                m.update({f"{k}_{s}": v for k, v in scores(logits[f"logits.{s}"], prep.y[s], prep.n_classes).items()})
            metrics[name] = m
    atomic_write_json(paths.metrics / "classify_teacher.json", metrics)
    return metrics
