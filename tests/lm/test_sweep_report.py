"""qelm_core/lm/sweep_report.py: the sweep's pure functions (winners, summary markdown)."""
import pytest

BASELINES = {"ppl_unigram": 9.0, "ppl_bigram": 8.0, "ppl_teacher": 3.0, "ppl_full_unigram": 900.0,
             "ppl_full_teacher": 30.0}


def row(label, n, val, val_full, model="student", kind="quantum"):
    return {"label": label, "n_qubits": n, "layers": 2, "alpha": 0.5, "seed": 0, "model": model, "kind": kind,
            "params": 10 * n, "bytes": 40 * n, "val_ppl": val, "test_ppl": val + 0.1, "val_ppl_full": val_full,
            "ppl_full": val_full + 1.0, **BASELINES, "mlflow_run_id": ""}


def test_sweep_winner_is_chosen_on_validation_ppl_full_across_vocabularies():
    """Perplexities over V = 16 and V = 64 entries are not comparable (the smaller V always looks better);
    ppl_full is. The V = 16 point's lower V-entry figure must not win; the lower validation ppl_full does,
    and a classical run never does, nor a lower *test* figure."""
    from qelm_core.lm import sweep_report as report

    table = [row("q4-a", 4, 3.0, 500.0), row("q6-a", 6, 9.0, 420.0), row("q6-b", 6, 8.0, 400.0),
             {**row("q6-c", 6, 8.5, 410.0), "ppl_full": 100.0},
             row("c6", 6, 1.0, 10.0, model="classical", kind="classical")]
    assert {n: w["label"] for n, w in report.winners(table).items()} == {4: "q4-a", 6: "q6-b"}
    assert report.registered_winner(table)["label"] == "q6-b"
    with pytest.raises(ValueError, match="no student run"):
        report.registered_winner(table[-1:])
    text = report.markdown(report.summarize(table), table, report.registered_winner(table), "http://x")
    assert "V = 16: **q4-a**" in text and "V = 64: **q6-b**" in text and "registered as challenger" in text
    assert text.count("registered as challenger") == 1


def test_summary_has_mean_and_spread_of_ppl_full_over_seeds():
    from qelm_core.lm import sweep_report as report

    table = [{**row(f"q-s{s}", 6, 8.0, 400.0), "seed": s, "ppl_full": 400.0 + 10 * s} for s in range(3)]
    (summary,) = report.summarize(table)
    assert summary["seeds"] == 3 and summary["ppl_full_mean"] == pytest.approx(410.0)
    assert summary["ppl_full_std"] == pytest.approx(10.0) and summary["bytes"] == 240
    with_rows = table + [{**r, "embedded_tokens": 16} for r in table]  # another configuration, not more seeds
    assert [(r["embedded_tokens"], r["seeds"]) for r in report.summarize(with_rows)] == [(0, 3), (16, 3)]
    tied = table + [{**r, "readout": "tied", "ppl_full": r["ppl_full"] - 50} for r in table]  # rows of old sweeps: basis
    assert [(r["readout"], r["seeds"], r["ppl_full_mean"]) for r in report.summarize(tied)] == [("tied", 3, 360.0),
                                                                                               ("basis", 3, 410.0)]
    text = report.markdown(report.summarize(tied), tied, report.registered_winner(tied), "http://x")
    assert "| 6 | 2 | 0.5 | all | tied | quantum |" in text and "| 6 | 2 | 0.5 | all | basis | quantum |" in text


def test_sweep_rows_read_the_same_metric_names_as_the_stages():
    """train and evaluate both name their models student / classical: rows() reads them untranslated, and a
    classical student (student.kind: classical) stays apart from its classical twin in the summary."""
    from qelm_core.lm import sweep_report as report

    train = {"p": {"student_params_total": 100, "student_val_ppl": 5.0, "classical_params_total": 90, "classical_val_ppl": 4.0}}
    evaluate = {"p": {"ppl_student": 5.5, "ppl_classical": 4.5, "student_kind": "classical", "ppl_full_student": 450.0,
                      "ppl_full_classical": 440.0, "ppl_full_val_student": 460.0, "ppl_full_val_classical": 455.0,
                      "bytes_student": 500, "ppl_full_bigram": 600.0, "bytes_classical": 400, **BASELINES}}
    table = report.rows({"p": {"n_qubits": 4, "layers": 2, "alpha": 0.5, "seed": 0}}, train, evaluate)
    assert [(r["model"], r["kind"], r["params"], r["bytes"], r["test_ppl"], r["ppl_full"], r["val_ppl_full"])
            for r in table] == [("student", "classical", 100, 500, 5.5, 450.0, 460.0),
                                ("classical", "classical", 90, 400, 4.5, 440.0, 455.0)]
    assert len(report.summarize(table)) == 2


def test_pareto_files_plot_ppl_full_for_every_vocabulary(tmp_path):
    from qelm_core.lm import sweep_report as report

    table = [row("q4", 4, 3.0, 500.0), row("q6", 6, 8.0, 400.0),
             row("c4", 4, 2.0, 450.0, model="classical", kind="classical")]
    files = report.publish_pareto(tmp_path, report.summarize(table))
    assert [f.name for f in files] == ["pareto.png", "pareto_quantum.csv", "pareto_classical.csv"]
    header, *lines = (tmp_path / "pareto_quantum.csv").read_text().splitlines()
    assert "ppl_full_mean" in header.split(",") and len(lines) == 2
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
