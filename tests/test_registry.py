"""Promotion gate (pure logic) and the real MLflow registry: register -> promote -> load -> serve."""
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from qelm_core.registry import PromotionError, decide, gate_tags
from qelm_core.serving import context_ids_body, model_server, post


def version(number, ppl, data="h1"):
    return SimpleNamespace(version=str(number), tags={"ppl_test": str(ppl), "test_data_hash": data})


def test_first_model_becomes_champion():
    assert decide(version(1, 20), None, force=False).promote


def test_worse_challenger_is_kept_out_and_better_one_let_in():
    assert not decide(version(2, 21), version(1, 20), force=False).promote
    assert decide(version(2, 19), version(1, 20), force=False).promote
    forced = decide(version(2, 21), version(1, 20), force=True)
    assert forced.promote and forced.reason.startswith("forced")


def test_refuses_no_challenger_and_different_test_data():
    with pytest.raises(PromotionError, match="no `challenger`"):
        decide(None, version(1, 20), force=False)
    with pytest.raises(PromotionError, match="different test data"):
        decide(version(2, 5, data="other"), version(1, 20), force=True)


def gated(number, metric, better, value, data="h1"):
    return SimpleNamespace(version=str(number), tags=gate_tags(metric, better, value, data))


def test_a_higher_is_better_gate_promotes_only_a_more_accurate_classifier():
    assert not decide(gated(2, "accuracy_test", "higher", 0.80), gated(1, "accuracy_test", "higher", 0.85), False).promote
    better = decide(gated(2, "accuracy_test", "higher", 0.90), gated(1, "accuracy_test", "higher", 0.85), False)
    assert better.promote and better.metric == "accuracy_test" and better.rows[1][2] == "0.9"
    assert gate_tags("ppl_test", "lower", 19.0, "h1") == version(1, 19.0).tags | {"gate_metric": "ppl_test",
                                                                                   "gate_better": "lower"}


def test_versions_with_different_gates_are_not_compared():
    with pytest.raises(PromotionError, match="gated on ppl_test"):
        decide(gated(2, "accuracy_test", "higher", 0.9), version(1, 20), force=True)
    with pytest.raises(ValueError, match="lower' or 'higher"):
        gate_tags("accuracy_test", "bigger", 0.9, "h1")


@pytest.mark.parametrize("module, frame, message", [
    ("qelm_core.lm.pyfunc_model", {"context_ids": [[1, 2]] * 10_001}, "at most 10000 per request"),
    ("qelm_core.classify.pyfunc_model", {"text": ["a"] * 10_001}, "at most 10000 per request"),
    ("qelm_core.classify.pyfunc_model", {"dataset": ["bbc"]}, "give a `text` column"),
    ("qelm_core.lm.pyfunc_model", {}, "no rows in the request"),
])
def test_both_served_models_answer_bad_requests_with_our_one_line_400(module, frame, message):
    """The shared serving base (qelm_core/pyfunc_base.py): row limit and INVALID_PARAMETER_VALUE (HTTP 400)."""
    import importlib
    import threading

    from mlflow.exceptions import MlflowException

    served = next(v for v in vars(importlib.import_module(module)).values()
                  if isinstance(v, type) and v.__module__ == module)()
    served.lock = threading.Lock()
    with pytest.raises(MlflowException, match=message) as err:
        served.predict(None, pd.DataFrame(frame))
    assert err.value.error_code == "INVALID_PARAMETER_VALUE" and err.value.get_http_status_code() == 400


def save_tiny_student(folder):
    from qelm_core.config import parse_params
    from qelm_core.lm.data import Vocab
    from qelm_core.lm.student import build_student, save_student

    params = parse_params({"student": {"n_qubits": 3, "context": 2, "layers": 1}})
    vocab = Vocab([-1, 198, 13, 11, 262, 290, 284, 258], ["<OTHER>"] + ["t"] * 7, [1] * 8)
    save_student(build_student(params), folder, {"vocab": vocab.to_json(), "run_id": ""})
    return params


@pytest.mark.slow
def test_registry_gate_load_and_rest_serving(tmp_path, monkeypatch):
    from qelm_core import tracking
    from qelm_core.config import Paths
    from qelm_core.lm.predict import NextTokenPredictor
    from qelm_core.registry import promote

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    paths = Paths(tmp_path)
    uri = tracking.configure(paths)
    save_tiny_student(tmp_path / "student")

    def register(ppl, data="h1"):
        import mlflow

        with mlflow.start_run():
            model_uri = tracking.log_student_model(tmp_path / "student", 8, 2)
        with tracking.registered_version(model_uri, "qelm-student", {"ppl_test": str(ppl),
                                                                     "test_data_hash": data}) as number:
            return number

    def champion():
        return str(tracking.alias_version("qelm-student", "champion").version)

    register(10.0)
    assert promote("qelm-student").promote and champion() == "1"
    register(12.0)
    assert not promote("qelm-student").promote and champion() == "1"
    register(8.0, data="h2")
    with pytest.raises(PromotionError, match="different test data"):
        promote("qelm-student")
    assert champion() == "1"
    register(8.0)
    assert promote("qelm-student").promote and champion() == "4"

    model = tracking.load_registered("models:/qelm-student@champion")
    ids = [[0, 1], [3, 7], [2, 2]]
    out = model.predict(pd.DataFrame({"context_ids": ids}))
    direct = NextTokenPredictor.from_folder(tmp_path / "student", with_tokenizer=False).probs(np.array(ids))
    assert np.array_equal(np.array(out["probs"].tolist()), direct)

    with model_server("models:/qelm-student@champion", uri) as url:
        status, text = post(url, context_ids_body([[0, 1], [4, 5]]))
    assert status == 200, text[:500]
    predictions = json.loads(text)["predictions"]
    assert len(predictions) == 2
    for row in predictions:
        assert len(row["probs"]) == 8 and sum(row["probs"]) == pytest.approx(1.0, abs=1e-6)
