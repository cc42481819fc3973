"""End to end: `dvc repro classify/dvc.yaml` on a tiny subset of both datasets with the real MiniLM
encoder and real SmolLM2 features, 2 seeds, then the registered `qelm-classifier` answers."""
import json
import shutil

import numpy as np
import pytest
import yaml

from tests.conftest import REPO, commit_dvc_repo, run

TINY = {
    "seeds": [0, 1],
    "datasets": {"sentiment": {"max_examples": 60, "path": str(REPO / ".cache" / "sdist")},
                 "topic": {"max_examples": 60}},
    "features": {"teacher_max_tokens": 32, "encoder_max_tokens": 32},
    "train": {"epochs": 2},
    "evaluate": {"noisy_examples": 2, "shots": 32},
}
MODELS = ("teacher", "quantum_exact", "quantum_noisy", "quantum_exact_subset", "mlp", "logreg", "majority")


def _classify_repo(folder):
    from qelm_core.config import _merge

    folder.mkdir(parents=True)
    shutil.copy(REPO / ".gitignore", folder / ".gitignore")
    shutil.copytree(REPO / "qelm_core", folder / "qelm_core", ignore=shutil.ignore_patterns("__pycache__"))
    (folder / "classify").mkdir()
    shutil.copy(REPO / "classify" / "dvc.yaml", folder / "classify" / "dvc.yaml")
    params = _merge(yaml.safe_load((REPO / "classify" / "params.yaml").read_text()), TINY)
    (folder / "classify" / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return commit_dvc_repo(folder, "tiny classify pipeline")


@pytest.mark.slow
@pytest.mark.skipif(not (REPO / ".cache" / "sdist" / "vaderSentiment-3.3.2.tar.gz").is_file(),
                    reason="vaderSentiment sdist not fetched (make setup does it)")
def test_classify_pipeline_end_to_end(tmp_path, monkeypatch):
    repo = _classify_repo(tmp_path / "repo")
    run(["dvc", "repro", "classify/dvc.yaml"], repo, timeout=600)

    result = json.loads((repo / "metrics" / "classify_eval.json").read_text())
    assert set(result["datasets"]) == {"sentiment", "topic"}
    for name, ds in result["datasets"].items():
        assert set(MODELS) <= set(ds["summary"]), name
        for key in MODELS:
            s = ds["summary"][key]
            assert 0 <= s["accuracy_mean"] <= 1 and 0 <= s["macro_f1_mean"] <= 1 and s["accuracy_std"] >= 0
        p = ds["params"]
        assert p["quantum"]["circuit"] == 3 * 11 * 3 and p["mlp"]["total"] <= p["quantum"]["total"]
        assert p["teacher"]["classical"] > 80_000_000 and ds["fused_vs_default_qubit_max_abs"] < 1e-4
    per_seed = json.loads((repo / "reports" / "classify_per_seed.json").read_text())
    assert [row["seed"] for row in per_seed["topic"]] == [0, 1]
    table = (repo / "reports" / "classify_results.md").read_text()
    assert "| model | accuracy | macro-F1 |" in table and "FakeGuadalupeV2" in table
    teacher = json.loads((repo / "metrics" / "classify_teacher.json").read_text())
    assert teacher["topic"]["accuracy_test"] > 0.2

    # nothing changed: a second repro runs no stage
    again = run(["dvc", "repro", "classify/dvc.yaml"], repo)
    assert "Running stage" not in again.stdout

    # the registered model answers from text
    from qelm_core import tracking
    from qelm_core.classify.config import ClassifyPaths

    reg = json.loads((repo / "metrics" / "classify_register.json").read_text())
    assert reg["version"] == reg["champion"] == 1
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    tracking.configure(ClassifyPaths(repo))
    import pandas as pd

    model = tracking.load_registered("models:/qelm-classifier@champion")
    out = model.predict(pd.DataFrame({"text": ["A moving, beautifully acted film.", "Shares fell after the profit warning."],
                                      "dataset": ["sentiment", "topic"]}))
    assert out["label"][0] in ("negative", "positive") and out["label"][1] in result["datasets"]["topic"]["labels"]
    assert abs(sum(out["probs"][1]) - 1) < 1e-6


def test_accuracy_and_macro_f1_by_hand():
    """scikit-learn's metrics, with a class neither present nor predicted counted as F1 0 (the mean is over
    every class of the dataset, so a student that never predicts a class is not flattered)."""
    from qelm_core.classify.evaluate import accuracy, macro_f1

    y, pred = np.array([0, 1, 2, 2, 1]), np.array([0, 2, 2, 2, 0])
    assert accuracy(pred, y) == pytest.approx(0.6)
    assert macro_f1(pred, y, 4) == pytest.approx((2 / 3 + 0 + 4 / 5 + 0) / 4)
