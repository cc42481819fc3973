"""Stage evaluate: every student number beside uniform, unigram, bigram, classical and teacher."""
from __future__ import annotations

import json

import numpy as np

from qelm_core import tracking
from qelm_core.config import Params, Paths
from qelm_core.lm.data import unigram_probs
from qelm_core.quantum.devices import fake_hardware
from qelm_core.lm.distill import load_distill_data
from qelm_core.lm.evaluate import (bigram_table, load_full_vocab, model_probs, model_scores, perplexity, seed_stats,
                                target_probs, tune_bigram_k)
from qelm_core.quantum.hardware import cost_report
from qelm_core.io import atomic_write_json, atomic_write_text
from qelm_core.plots import perplexity_bars
from qelm_core.lm.reports import model_card
from qelm_core.lm.student import load_student, noisy_subset
from qelm_core.weights import folder_digest


def run(params: Params, paths: Paths) -> dict:
    tracking.require_server(paths)  # an unreachable MLflow server fails now, not after the long work
    data, vocab, ids = load_distill_data(paths, params.student.context)
    test, V = data["test"], vocab.size
    student, cfg = load_student(paths.student)
    ccfg = load_student(paths.root / "models" / "classical")[1]
    k = tune_bigram_k(ids["train"], ids["val"], V)
    full, llm_targets, teacher_full = load_full_vocab(paths.prepared, paths.teacher, vocab)  # ppl_full_*: see evaluate.py
    llm_y, val = llm_targets["test"], data["val"]
    prev, y = test.contexts[:, -1].numpy(), test.targets.numpy()
    probs = {"bigram": bigram_table(ids["train"], V, k)[prev],
             "unigram": np.broadcast_to(unigram_probs(ids["train"], V), (len(prev), V))}
    m: dict = {"ppl_uniform": float(V), "top1_uniform": 1 / V, "top5_uniform": 5 / V, "bigram_k": k,
               "ppl_full_uniform": float(full.size), "full_vocab_k": full.k, "ppl_full_teacher": perplexity(teacher_full)}
    m.update({f"{key}_teacher": v for key, v in model_scores(test.teacher.float().numpy().clip(1e-8), y).items()})
    for name, p in probs.items():
        m.update({f"{key}_{name}": value for key, value in model_scores(p, y, (full, llm_y)).items()})
    for name, selected in (("student", cfg["seed"]), ("classical", ccfg["seed"])):  # every seed, same test positions
        loaded = [load_student(f) for f in sorted((paths.root / "models" / "seeds").glob(f"{name}-s*"))]
        per_seed = {c["seed"]: model_scores(model_probs(model, test.contexts), y, (full, llm_y)) for model, c in loaded}
        for (model, c) in loaded:  # ppl_full_val_*: what a sweep picks its winner on across vocabulary sizes
            per_seed[c["seed"]]["ppl_full_val"] = perplexity(full.target_probs(
                model_probs(model, val.contexts), val.targets.numpy(), llm_targets["val"]))
        m.update(seed_stats(name, list(per_seed.values()), m["ppl_unigram"], m["ppl_teacher"],
                            (m["ppl_full_unigram"], m["ppl_full_teacher"])))
        m[f"ppl_{name}_selected"] = per_seed[selected]["ppl"]  # models/<name> is a copy of that seed's folder
    m.update(selected_seed=cfg["seed"], student_kind=cfg["kind"],
             ppl_ratio_student_classical=m["ppl_student"] / m["ppl_classical"],
             ppl_full_ratio_student_classical=m["ppl_full_student"] / m["ppl_full_classical"])
    if params.evaluate.noisy_positions:
        noisy, exact, tgt, zeros, pick = noisy_subset(student, test.contexts, y, params.evaluate.noisy_positions,
                                                      fake_hardware(params.evaluate.noisy_backend),
                                                      params.evaluate.shots, params.evaluate.smoothing, params.seed)
        m.update(ppl_student_noisy=perplexity(target_probs(noisy, tgt)),
                 ppl_student_exact_subset=perplexity(target_probs(exact, tgt)),
                 ppl_full_student_noisy=perplexity(full.target_probs(noisy, tgt, llm_y[pick])),
                 ppl_full_student_exact_subset=perplexity(full.target_probs(exact, tgt, llm_y[pick])),
                 noisy_zero_prob_targets=zeros, noisy_smoothing=params.evaluate.smoothing)
    if cfg["kind"] == "quantum" and student.params.ancillas:  # post-selection discards the other shots
        m["postselect_rate_student"] = float(student.postselect_rate(test.contexts).mean())
    if params.evaluate.hardware_backend and cfg["kind"] == "quantum":  # cost on hardware: hw_* (estimates)
        m.update(cost_report(student.spec, params.evaluate.hardware_backend, params.evaluate.shots, len(y),
                             params.evaluate.optimization_level, params.seed,
                             weights=student.circuit_weights.detach().cpu().numpy(),
                             circuits_per_position=V if student.params.readout == "tied" else 1))
        if "postselect_rate_student" in m:  # shots / rate taken to keep `shots` per position
            m["hw_est_seconds_postselected"] = m["hw_est_seconds"] / m["postselect_rate_student"]
    counts = cfg["param_counts"]
    m.update(params_student_circuit=counts["circuit"], params_student_embedding=counts["embedding"],
             params_student_classical=counts["classical"], params_classical=ccfg["param_counts"]["total"],
             params_teacher=json.loads((paths.metrics / "teacher.json").read_text())["params_teacher"],
             bytes_student=(paths.student / "model.safetensors").stat().st_size,
             bytes_classical=(paths.root / "models" / "classical" / "model.safetensors").stat().st_size,
             bytes_teacher=json.loads((paths.metrics / "teacher.json").read_text())["bytes_teacher"],
             test_tokens=len(y), test_data_hash=tracking.dvc_out_hashes(paths).get("data/prepared", vocab.digest()))
    bars = {n: m[f"ppl_{n}"] for n in ("uniform", "unigram", "bigram", "classical")}
    bars.update({f"{cfg['kind']} student": m["ppl_student"], "teacher": m["ppl_teacher"]})
    if "ppl_student_noisy" in m:
        bars["student noisy (subset)"] = m["ppl_student_noisy"]
    chart = perplexity_bars(paths.plots / "eval_perplexity.png", bars, f"Test perplexity, V={V}")
    card = model_card(params, m, cfg)
    with tracking.pipeline_run(paths, params, "evaluate", folder_digest(paths.student)):
        tracking.log_metrics(m)
        tracking.set_tags({k: str(m[k]) for k in ("hw_backend",) if k in m})
        tracking.log_artifact(chart, "plots")
        atomic_write_text(paths.root / "reports" / "model_card.md", card)
        tracking.log_artifact(paths.root / "reports" / "model_card.md", "reports")
    atomic_write_json(paths.metrics / "eval.json", m)
    return m
