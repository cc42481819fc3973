"""The model card: a short markdown page with data, teacher, circuit, device, metrics beside baselines, sizes."""
from __future__ import annotations

from qelm_core.config import Params


def model_card(params: Params, m: dict, cfg: dict) -> str:
    sp, n = params.student, params.student.n_qubits
    rows = [("uniform", "ppl_uniform", "top1_uniform", "-"), ("unigram (add-one)", "ppl_unigram", "top1_unigram", "-"),
            (f"bigram (add-k, k={m['bigram_k']})", "ppl_bigram", "top1_bigram", "-"),
            ("classical student (equal params)", "ppl_classical", "top1_classical", m["params_classical"]),
            ("**quantum student**", "ppl_quantum", "top1_quantum",
             m["params_embedding"] + m["params_quantum_circuit"] + m["params_quantum_classical"]),
            ("teacher (projected)", "ppl_teacher", "top1_teacher", m["params_teacher"])]
    def cell(key: str, digits: int) -> str:  # mean +- sd over seeds for the trained models
        return f"{m[key]:.{digits}f}" + (f" ± {m[key + '_sd']:.{digits}f}" if key + "_sd" in m else "")

    table = "\n".join(f"| {name} | {cell(p, 2)} | {cell(a, 3)} | {c} |" for name, p, a, c in rows)
    noisy = ""
    if "ppl_quantum_noisy" in m:
        noisy = (f"\nOn the fake noisy backend {params.evaluate.noisy_backend} with {params.evaluate.shots} shots, on "
                 f"{params.evaluate.noisy_positions} test positions: perplexity {m['ppl_quantum_noisy']:.2f} vs "
                 f"{m['ppl_quantum_exact_subset']:.2f} exact on the same positions ({m['noisy_zero_prob_targets']} "
                 f"targets sampled at zero probability, smoothed with eps={m['noisy_smoothing']}).\n")
    return f"""# qelm student model card

- **Data**: corpus `{params.data.corpus}` {params.data.documents or ''}; {m['test_tokens']} test tokens;
  vocabulary of {2**n} entries (the {2**n - 1} most frequent teacher tokens of the train split + OTHER);
  test data hash `{m['test_data_hash']}`.
- **Teacher**: `{params.teacher.model}` ({m['params_teacher']:,} parameters, {m['bytes_teacher']:,} bytes as shipped),
  distributions projected onto the student vocabulary.
- **Circuit**: {n} qubits Born machine, context {sp.context} tokens, {sp.layers} trainable layers per token
  (Y-Z-Y rotations + {sp.entangler.upper()} ring), encoding `{sp.encoding}`, basis assignment `{sp.assignment}`,
  log-bias {sp.log_bias}; {m['params_quantum_circuit']} circuit
  parameters + {m['params_embedding']} embedding angles + {m['params_quantum_classical']} classical.
- **Device**: trained on `{params.device.name}`; file `model.safetensors` {m['bytes_student']:,} bytes.
- **Distillation**: alpha={params.train.alpha}, T={params.train.temperature}, {params.train.steps} steps,
  {params.train.schedule} lr from {params.train.lr}; {params.train.seeds} seeds per student (mean ± sd below);
  this file is seed {m['selected_seed']} (best validation perplexity): test perplexity {m['ppl_quantum_selected']:.2f}.

| model | test perplexity | top-1 | parameters |
|---|---|---|---|
{table}

Gap recovered (0 = unigram, 1 = teacher): quantum {cell('gap_recovered', 3)}, classical
{cell('gap_recovered_classical', 3)}; quantum / classical perplexity {m['ppl_ratio_quantum_classical']:.3f}.
{noisy}"""
