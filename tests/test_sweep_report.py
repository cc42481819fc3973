"""qelm_core/sweep_report.py: the sweep's pure functions (winners, summary markdown)."""
import pytest


def test_sweep_winner_is_chosen_within_one_vocabulary():
    """Perplexities over V = 16 and V = 64 are not comparable: the V = 16 point's lower figure must not win
    the V = 64 registration (the old rule took the lowest validation perplexity over all points)."""
    from qelm_core import sweep_report as report

    def row(label, n, val):
        return {"label": label, "n_qubits": n, "layers": 2, "alpha": 0.5, "seed": 0, "model": "student", "kind": "quantum",
                "params": 10 * n, "val_ppl": val, "test_ppl": val + 0.1, "ppl_unigram": 9.0, "ppl_bigram": 8.0,
                "ppl_teacher": 3.0, "mlflow_run_id": ""}

    table = [row("q4-a", 4, 3.0), row("q6-a", 6, 9.0), row("q6-b", 6, 8.0),
             {**row("c6", 6, 1.0), "model": "classical", "kind": "classical"}]
    assert {n: w["label"] for n, w in report.winners(table).items()} == {4: "q4-a", 6: "q6-b"}
    assert report.registered_winner(table, 6)["label"] == "q6-b"
    with pytest.raises(ValueError, match="n_qubits = 8"):
        report.registered_winner(table, 8)
    text = report.markdown(report.summarize(table), table, report.registered_winner(table, 6), "http://x")
    assert "V = 16: **q4-a**" in text and "V = 64: **q6-b**" in text and "registered as challenger" in text
    assert text.count("registered as challenger") == 1


def test_sweep_rows_read_the_same_metric_names_as_the_stages():
    """train and evaluate both name their models student / classical: rows() reads them untranslated, and a
    classical student (student.kind: classical) stays apart from its classical twin in the summary."""
    from qelm_core import sweep_report as report

    train = {"p": {"student_params_total": 100, "student_val_ppl": 5.0, "classical_params_total": 90, "classical_val_ppl": 4.0}}
    evaluate = {"p": {"ppl_student": 5.5, "ppl_classical": 4.5, "student_kind": "classical", "ppl_unigram": 9.0,
                      "ppl_bigram": 8.0, "ppl_teacher": 3.0}}
    table = report.rows({"p": {"n_qubits": 4, "layers": 2, "alpha": 0.5, "seed": 0}}, train, evaluate)
    assert [(r["model"], r["kind"], r["params"], r["test_ppl"]) for r in table] == [
        ("student", "classical", 100, 5.5), ("classical", "classical", 90, 4.5)]
    assert len(report.summarize(table)) == 2
