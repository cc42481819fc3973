"""Stage register: log the student as an MLflow pyfunc, register a version, alias it `challenger`.

The very first version also becomes `champion` (there is nothing to compare it with); after that
only `qelm promote` moves `champion`, through the gate in registry.py. If anything fails after the
version was created, it is deleted again and the MLflow run is marked FAILED: the registry is unchanged.
"""
from __future__ import annotations

import json

from qelm_core import tracking
from qelm_core.config import Params, Paths
from qelm_core.registry import gate_tags, register_challenger
from qelm_core.weights import folder_digest


def run(params: Params, paths: Paths) -> dict:
    tracking.configure(paths)
    name = params.registry.model_name
    m = json.loads((paths.metrics / "eval.json").read_text())
    cfg = json.loads((paths.student / "config.json").read_text())
    tags = {key: str(m[key]) for key in ("ppl_student", "ppl_student_sd", "ppl_classical", "ppl_unigram", "ppl_bigram",
                                         "ppl_teacher", "gap_recovered_student", "selected_seed")}
    # the gate compares this version's own test perplexity (the selected seed's), lower is better
    tags.update(gate_tags("ppl_test", "lower", m["ppl_student_selected"], m["test_data_hash"]))
    with tracking.pipeline_run(paths, params, "register", folder_digest(paths.student)) as run_id:
        uri = tracking.log_student_model(paths.student, cfg["vocab"]["size"], cfg["context"])
        return register_challenger(uri, name, {**tags, "run_id": run_id}, paths.metrics / "register.json")
