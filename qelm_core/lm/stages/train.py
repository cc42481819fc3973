"""Stage train: the quantum student and its equal-parameter classical twin, same loop, loss, data and
recipe, each from `train.seeds` seeds. models/seeds/<name>-s<seed>/ holds every one; models/student and
models/classical the seed with the best validation perplexity (what `register` publishes)."""
from __future__ import annotations

import json
import shutil

import torch

from qelm_core import tracking
from qelm_core.lm.basis import load_basis
from qelm_core.quantum.circuits import draw_circuit_png
from qelm_core.config import Params, Paths
from qelm_core.lm.distill import load_distill_data, seed_summary, train_all, train_workers, write_history_csv
from qelm_core.io import atomic_dir, atomic_write_json
from qelm_core.plots import training_curve
from qelm_core.progress import progress_bar
from qelm_core.lm.student import build_student, load_student
from qelm_core.weights import folder_digest


def run(params: Params, paths: Paths) -> dict:
    tracking.configure(paths)  # fail fast on an unreachable tracking server, before any training
    data, vocab, _ = load_distill_data(paths, params.student.context)
    basis = torch.from_numpy(load_basis(paths.basis / "basis.json", params.student.n_qubits, vocab.digest()))
    build_student(params, basis=basis)  # a bad student/device config fails here, in one line, before any worker
    teacher_metrics = json.loads((paths.metrics / "teacher.json").read_text())
    kinds = {"student": params.student.kind, "classical": "classical"}  # folder name -> student.kind
    seeds = range(params.seed, params.seed + params.train.seeds)
    jobs = [(name, kind, seed) for name, kind in kinds.items() for seed in seeds]  # quantum (slowest) first
    metrics: dict = {"seeds": params.train.seeds}
    with tracking.pipeline_run(paths, params, stage="train") as run_id, progress_bar() as bar:
        tracking.log_metrics(teacher_metrics, prefix="")
        tracking.log_dataset("prepared-test", data["test"].targets.numpy(), str(paths.prepared),
                             tracking.dvc_out_hashes(paths).get("data/prepared", vocab.digest()), "test")

        def done(name: str, seed: int, r) -> None:
            print(f"train: {name} seed {seed}: best val ppl {r.best_val_ppl:.3f} after {r.steps} steps ({r.seconds:.0f} s)")
            for row in r.history:
                tracking.log_metrics({f"{name}_s{seed}_val_ppl": row["val_ppl"],
                                      f"{name}_s{seed}_train_loss": row["train_loss"]}, step=row["step"])

        with atomic_dir(paths.root / "models" / "seeds") as seeds_dir:
            results = train_all(paths.root, params, jobs, seeds_dir, {}, train_workers(len(jobs), params.train.seeds),
                                bar, done)
            selected = {}
            for name in kinds:
                runs = {seed: results[(name, seed)] for seed in seeds}
                models = {seed: load_student(seeds_dir / f"{name}-s{seed}")[0] for seed in seeds}
                metrics.update(seed_summary(name, runs, models))
                selected[name] = metrics[f"{name}_selected_seed"]
        for name, seed in selected.items():  # the selected seed, where register, predict and serving look
            with atomic_dir(paths.root / "models" / name) as tmp:
                shutil.copytree(paths.root / "models" / "seeds" / f"{name}-s{seed}", tmp, dirs_exist_ok=True)
        tracking.tag_run(run_id, {tracking.MODEL_TAG: folder_digest(paths.student)})  # how evaluate finds this run
        histories = {name: results[(name, seed)].history for name, seed in selected.items()}
        metrics["mlflow_run_id"] = run_id
        curve = training_curve(paths.plots / "train_curve.png", histories,
                               {"unigram (test)": teacher_metrics["ppl_unigram"],
                                "teacher (val)": teacher_metrics["ppl_teacher_val"]})
        write_history_csv(paths.plots / "train_curve.csv", histories["student"], histories["classical"])
        if params.student.kind == "quantum":
            spec = load_student(paths.student)[0].spec
            tracking.log_artifact(draw_circuit_png(spec, paths.plots / "circuit.png"), "plots")
        tracking.log_artifact(curve, "plots")
        tracking.log_metrics(metrics)
        atomic_write_json(paths.metrics / "train.json", metrics)
    return metrics
