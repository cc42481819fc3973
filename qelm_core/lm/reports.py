"""The model card: a short markdown page with data, teacher, circuit, device, metrics beside baselines, sizes."""
from __future__ import annotations

from qelm_core.config import Params


def model_card(params: Params, m: dict, cfg: dict) -> str:
    sp, n = params.student, params.student.n_qubits
    rows = [("uniform", "uniform", "-"), ("unigram (add-one)", "unigram", "-"),
            (f"bigram (add-k, k={m['bigram_k']})", "bigram", "-"),
            ("classical student (equal params)", "classical", m["params_classical"]),
            (f"**{cfg['kind']} student**", "student", m["params_student_embedding"] + m["params_student_circuit"] + m["params_student_classical"]),
            ("teacher (projected; full: its own distribution)", "teacher", m["params_teacher"])]
    def cell(key: str, digits: int) -> str:  # mean +- sd over seeds for the trained models
        return f"{m[key]:.{digits}f}" + (f" ± {m[key + '_sd']:.{digits}f}" if key + "_sd" in m else "")

    table = "\n".join(f"| {name} | {cell('ppl_' + k, 2)} | {cell('ppl_full_' + k, 1)} | {cell('top1_' + k, 3)} | {c} |"
                      for name, k, c in rows)
    noisy = ""
    if "ppl_student_noisy" in m:
        noisy = (f"\nOn the fake noisy backend {params.evaluate.noisy_backend} with {params.evaluate.shots} shots, on "
                 f"{params.evaluate.noisy_positions} test positions: perplexity {m['ppl_student_noisy']:.2f} vs "
                 f"{m['ppl_student_exact_subset']:.2f} exact on the same positions ({m['noisy_zero_prob_targets']} "
                 f"targets sampled at zero probability, smoothed with eps={m['noisy_smoothing']}).\n")
    reupload = f"; the token's angles again before every layer k with k % {sp.reupload_every} == 0" if sp.reupload_every else ""
    rows = f" (angle rows for the {sp.embedded_tokens} most frequent ids, the rarer as bits)" if sp.embedded_tokens else ""
    if sp.ancillas:
        reupload += (f"; {sp.ancillas} ancilla qubit(s) prepared in |+>, post-selected on 0 "
                     f"({m.get('postselect_rate_student', float('nan')):.0%} of the shots kept)")
    return f"""# qelm student model card

- **Data**: corpus `{params.data.corpus}` {params.data.documents or ''}; {m['test_tokens']} test tokens;
  vocabulary of {2**n} entries (the {2**n - 1} most frequent teacher tokens of the train split + OTHER);
  test data hash `{m['test_data_hash']}`.
- **Teacher**: `{params.teacher.model}` ({m['params_teacher']:,} parameters, {m['bytes_teacher']:,} bytes as shipped),
  distributions projected onto the student vocabulary.
- **Circuit**: {n} qubits Born machine, context {sp.context} tokens, {sp.layers} trainable layers per token
  (Y-Z-Y rotations + {sp.entangler.upper()} ring{reupload}), encoding `{sp.encoding}`{rows}, basis assignment `{sp.assignment}`,
  log-bias {sp.log_bias}; {m['params_student_circuit']} circuit
  parameters + {m['params_student_embedding']} embedding angles + {m['params_student_classical']} classical.
- **Device**: trained on `{params.device.name}`; file `model.safetensors` {m['bytes_student']:,} bytes.
- **Distillation**: alpha={params.train.alpha}, T={params.train.temperature}, {params.train.steps} steps,
  {params.train.schedule} lr from {params.train.lr}; {params.train.seeds} seeds per student (mean ± sd below);
  this file is seed {m['selected_seed']} (best validation perplexity): test perplexity {m['ppl_student_selected']:.2f}.

| model | test perplexity (V = {2**n}) | full-vocabulary perplexity ({m['ppl_full_uniform']:,.0f} tokens) | top-1 | parameters |
|---|---|---|---|---|
{table}

Full-vocabulary perplexity: of the actual next token among all of the tokenizer's tokens; a student's OTHER
probability is shared among the tokens outside its vocabulary by an add-{m['full_vocab_k']:g} train unigram
(comparable across vocabulary sizes and with the teacher's own perplexity).

Gap recovered (0 = unigram, 1 = teacher): student {cell('gap_recovered_student', 3)}, classical
{cell('gap_recovered_classical', 3)}; student / classical perplexity {m['ppl_ratio_student_classical']:.3f}
(full vocabulary: gap recovered student {cell('gap_recovered_full_student', 3)}, classical {cell('gap_recovered_full_classical', 3)};
ratio {m['ppl_full_ratio_student_classical']:.3f}).
{noisy}"""
