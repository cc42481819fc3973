"""The one real end-to-end run: `dvc repro` of every stage on a tiny corpus (tests/conftest.py::tiny_repo)."""
import json

import numpy as np
import pandas as pd
import pytest

EVAL_KEYS = ["ppl_student", "ppl_student_noisy", "ppl_student_exact_subset", "ppl_classical", "ppl_uniform",
             "ppl_unigram", "ppl_bigram", "ppl_teacher", "params_student_circuit", "params_student_embedding",
             "params_classical", "params_teacher", "bytes_student", "bytes_teacher", "gap_recovered_student",
             "top1_student", "top5_student", "top1_classical", "top1_teacher", "top1_bigram", "top1_unigram",
             "ppl_student_sd", "ppl_classical_sd", "gap_recovered_student_sd", "seeds_student", "seeds_classical",
             "ppl_student_selected", "ppl_ratio_student_classical", "hw_spec_two_qubit_gates",
             "ppl_full_uniform", "ppl_full_unigram", "ppl_full_bigram", "ppl_full_classical", "ppl_full_student",
             "ppl_full_student_sd", "ppl_full_teacher", "ppl_full_student_noisy", "gap_recovered_full_student",
             "gap_recovered_full_classical", "ppl_full_ratio_student_classical", "ppl_full_val_student",
             "ppl_full_val_classical"]


@pytest.mark.slow
def test_eval_metrics_hold_every_key_beside_baselines(tiny_repo):
    m = json.loads((tiny_repo / "metrics" / "eval.json").read_text())
    assert set(EVAL_KEYS) <= set(m)
    assert m["ppl_uniform"] == 16
    assert m["ppl_teacher"] < m["ppl_unigram"] < m["ppl_uniform"]
    # full tokenizer vocabulary (49,152 entries): the same order, every figure above its V-restricted one
    assert m["ppl_full_teacher"] < m["ppl_full_unigram"] < m["ppl_full_uniform"] == 49152
    for name in ("unigram", "bigram", "classical", "student"):
        assert m[f"ppl_full_{name}"] > m[f"ppl_{name}"]
    assert m["params_classical"] <= m["params_student_embedding"] + m["params_student_circuit"] + m["params_student_classical"]
    assert m["bytes_student"] == (tiny_repo / "models" / "student" / "model.safetensors").stat().st_size
    train = json.loads((tiny_repo / "metrics" / "train.json").read_text())
    assert train["student_steps"] == 30 and np.isfinite(train["student_val_ppl"])
    # every seed of both kinds was trained and evaluated; the selected one is the best on validation
    assert m["seeds_student"] == m["seeds_classical"] == train["seeds"] == 3 and m["ppl_student_sd"] > 0
    seeds = sorted(p.name for p in (tiny_repo / "models" / "seeds").iterdir())
    assert seeds == [f"{k}-s{s}" for k in ("classical", "student") for s in (0, 1, 2)]
    assert m["selected_seed"] == train["student_selected_seed"]
    assert json.loads((tiny_repo / "models" / "student" / "config.json").read_text())["seed"] == m["selected_seed"]
    basis = json.loads((tiny_repo / "data" / "basis" / "basis.json").read_text())
    assert basis["method"] == "meaning" and sorted(basis["basis"]) == list(range(16))
    card = (tiny_repo / "reports" / "model_card.md").read_text()
    assert "unigram" in card and "classical student" in card and "teacher" in card
    assert (tiny_repo / "plots" / "eval_perplexity.png").stat().st_size > 1000


@pytest.mark.slow
def test_the_stage_log_shows_every_seeds_validation_perplexity_as_it_trains(tiny_repo):
    log = (tiny_repo.parent / "repro.log").read_text()  # training ran in worker processes on >= 2 cores
    for name in ("student", "classical"):
        for seed in (0, 1, 2):
            steps = [ln for ln in log.splitlines() if ln.startswith(f"train: {name} seed {seed} step ")]
            assert [ln.split()[5] for ln in steps] == ["10/30:", "20/30:", "30/30:"], steps
            assert all(np.isfinite(float(ln.rsplit(" ", 1)[1])) for ln in steps)


@pytest.mark.slow
def test_champion_is_registered_loads_and_predicts(tiny_repo, monkeypatch):
    import mlflow

    from qelm_core.lm.predict import NextTokenPredictor
    from qelm_core.weights import folder_digest

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tiny_repo / 'mlflow.db'}")
    registered = json.loads((tiny_repo / "metrics" / "register.json").read_text())
    assert registered["champion"] == registered["version"] == 1
    model = mlflow.pyfunc.load_model("models:/qelm-student@champion")
    out = model.predict(pd.DataFrame({"text": ["Fair is foul, and foul is"]}))
    probs = np.array(out["probs"][0])
    assert probs.shape == (16,) and probs.sum() == pytest.approx(1.0, abs=1e-6)
    direct = NextTokenPredictor.from_folder(tiny_repo / "models" / "student")
    assert np.allclose(probs, direct.probs(direct.context_ids("Fair is foul, and foul is")[None])[0])
    run = mlflow.get_run(json.loads((tiny_repo / "metrics" / "train.json").read_text())["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert {"ppl_student", "ppl_unigram", "ppl_teacher_test", "student_val_ppl"} <= set(run.data.metrics)
    assert run.data.tags["git_commit"] != "unknown" and "dvc.md5.data/prepared" in run.data.tags
    # evaluate and register found this run from the model itself (its files carry no run id)
    assert run.data.tags["qelm.model_digest"] == folder_digest(tiny_repo / "models" / "student")


@pytest.mark.slow
def test_predict_cli_prints_top_k_tokens(tiny_repo):
    from tests.conftest import run

    out = run(["qelm", "predict", "--text", "Fair is foul, and foul is", "-k", "3"], tiny_repo).stdout
    rows = [line for line in out.splitlines() if line.startswith("│")]
    assert len(rows) == 3 and all("0." in row for row in rows)


@pytest.mark.slow
def test_tied_readout_end_to_end_scores_one_circuit_per_candidate(tiny_repo, tmp_path):
    """`dvc exp run -S student.readout=tied`: train, exact and noisy evaluation (compute-uncompute circuits on
    the fake backend), cost report and predict work with the tied read-out; upstream stages are reused."""
    import shutil
    from pathlib import Path

    from tests.conftest import run

    repo = Path(shutil.copytree(tiny_repo, tmp_path / "repo", symlinks=True))
    log = run(["dvc", "exp", "run", "-S", "student.readout=tied", "-S", "evaluate.noisy_positions=1"], repo).stdout
    assert "Running stage 'teacher'" not in log and "Running stage 'train'" in log
    m = json.loads((repo / "metrics" / "eval.json").read_text())
    assert json.loads((repo / "models" / "student" / "config.json").read_text())["readout"] == "tied"
    assert m["hw_circuits_per_position"] == 16 and m["hw_shots_total"] == 500 * m["test_tokens"] * 16
    assert m["ppl_student"] < m["ppl_uniform"] and np.isfinite(m["ppl_student_noisy"])
    out = run(["qelm", "predict", "--text", "Fair is foul, and foul is", "-k", "3"], repo).stdout
    assert len([line for line in out.splitlines() if line.startswith("│")]) == 3
