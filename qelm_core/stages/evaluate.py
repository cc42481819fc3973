"""Stage evaluate: every student number beside uniform, unigram, bigram, classical and teacher."""
from __future__ import annotations

import json

import numpy as np

from qelm_core import tracking
from qelm_core.config import Params, Paths
from qelm_core.data import unigram_probs
from qelm_core.devices import fake_hardware
from qelm_core.distill import load_distill_data
from qelm_core.evaluate import (bigram_table, load_full_vocab, model_probs, model_scores, perplexity, seed_stats,
                                target_probs, tune_bigram_k)
from qelm_core.hardware import cost_report
from qelm_core.io import atomic_write_json, atomic_write_text
from qelm_core.plots import perplexity_bars
from qelm_core.reports import model_card
from qelm_core.student import load_student, noisy_subset


def run(params: Params, paths: Paths) -> dict:
    tracking.require_server(paths)  # an unreachable MLflow server fails now, not after the long work
    data, vocab, ids = load_distill_data(paths, params.student.context)
    test, V = data["test"], vocab.size
    student, cfg = load_student(paths.student)
    classical, ccfg = load_student(paths.root / "models" / "classical")
    k = tune_bigram_k(ids["train"], ids["val"], V)
    full, llm_y, teacher_full = load_full_vocab(paths.prepared, paths.teacher, vocab)  # ppl_full_*: see evaluate.py
    prev, y = test.contexts[:, -1].numpy(), test.targets.numpy()
    probs = {"bigram": bigram_table(ids["train"], V, k)[prev],
             "unigram": np.broadcast_to(unigram_probs(ids["train"], V), (len(prev), V))}
    m: dict = {"ppl_uniform": float(V), "top1_uniform": 1 / V, "top5_uniform": 5 / V, "bigram_k": k,
               "ppl_full_uniform": float(full.size), "full_vocab_k": full.k, "ppl_full_teacher": perplexity(teacher_full)}
    m.update({f"{key}_teacher": v for key, v in model_scores(test.teacher.float().numpy().clip(1e-8), y).items()})
    for name, p in probs.items():
        m.update({f"{key}_{name}": value for key, value in model_scores(p, y, (full, llm_y)).items()})
    for name, folder in (("quantum", "student"), ("classical", "classical")):  # every seed, same test positions
        per_seed = [model_scores(model_probs(load_student(f)[0], test.contexts), y, (full, llm_y))
                    for f in sorted((paths.root / "models" / "seeds").glob(f"{folder}-s*"))]
        m.update(seed_stats(name, per_seed, m["ppl_unigram"], m["ppl_teacher"],
                            (m["ppl_full_unigram"], m["ppl_full_teacher"])))
    m.update(ppl_quantum_selected=model_scores(model_probs(student, test.contexts), y)["ppl"],
             ppl_classical_selected=model_scores(model_probs(classical, test.contexts), y)["ppl"],
             selected_seed=cfg["seed"], ppl_ratio_quantum_classical=m["ppl_quantum"] / m["ppl_classical"],
             ppl_full_ratio_quantum_classical=m["ppl_full_quantum"] / m["ppl_full_classical"])
    if params.evaluate.noisy_positions:
        noisy, exact, tgt, zeros, pick = noisy_subset(student, test.contexts, y, params.evaluate.noisy_positions,
                                                      fake_hardware(params.evaluate.noisy_backend),
                                                      params.evaluate.shots, params.evaluate.smoothing, params.seed)
        m.update(ppl_quantum_noisy=perplexity(target_probs(noisy, tgt)),
                 ppl_quantum_exact_subset=perplexity(target_probs(exact, tgt)),
                 ppl_full_quantum_noisy=perplexity(full.target_probs(noisy, tgt, llm_y[pick])),
                 ppl_full_quantum_exact_subset=perplexity(full.target_probs(exact, tgt, llm_y[pick])),
                 noisy_zero_prob_targets=zeros, noisy_smoothing=params.evaluate.smoothing)
    if params.evaluate.hardware_backend and cfg["kind"] == "quantum":  # cost on hardware: hw_* (estimates)
        m.update(cost_report(student.spec, params.evaluate.hardware_backend, params.evaluate.shots, len(y),
                             params.evaluate.optimization_level, params.seed,
                             weights=student.circuit_weights.detach().cpu().numpy()))
    counts = cfg["param_counts"]
    m.update(params_quantum_circuit=counts["circuit"], params_embedding=counts["embedding"],
             params_quantum_classical=counts["classical"], params_classical=ccfg["param_counts"]["total"],
             params_teacher=json.loads((paths.metrics / "teacher.json").read_text())["params_teacher"],
             bytes_student=(paths.student / "model.safetensors").stat().st_size,
             bytes_classical=(paths.root / "models" / "classical" / "model.safetensors").stat().st_size,
             bytes_teacher=json.loads((paths.metrics / "teacher.json").read_text())["bytes_teacher"],
             test_tokens=len(y), test_data_hash=tracking.dvc_out_hashes(paths).get("data/prepared", vocab.digest()))
    bars = {n: m[f"ppl_{n}"] for n in ("uniform", "unigram", "bigram", "classical", "quantum", "teacher")}
    if "ppl_quantum_noisy" in m:
        bars["quantum noisy (subset)"] = m["ppl_quantum_noisy"]
    chart = perplexity_bars(paths.plots / "eval_perplexity.png", bars, f"Test perplexity, V={V}")
    card = model_card(params, m, cfg)
    with tracking.pipeline_run(paths, params, run_id=cfg["run_id"], stage="evaluate"):
        tracking.log_metrics(m)
        tracking.set_tags({k: str(m[k]) for k in ("hw_backend",) if k in m})
        tracking.log_artifact(chart, "plots")
        atomic_write_text(paths.root / "reports" / "model_card.md", card)
        tracking.log_artifact(paths.root / "reports" / "model_card.md", "reports")
    atomic_write_json(paths.metrics / "eval.json", m)
    return m
