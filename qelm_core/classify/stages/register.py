"""Stage classify-register: log the quantum classifiers (first seed, every dataset) as one MLflow pyfunc,
register a new version of `qelm-classifier` aliased `challenger`, gated on `accuracy_test` (that seed's
exact test accuracy, mean over the datasets; higher is better). The first version also becomes `champion`;
after that only `qelm promote --model qelm-classifier` moves it, through the gate in registry.py (the one
the LM student uses). If anything fails after the version was created, it is deleted again."""
from __future__ import annotations

import hashlib
import json

from qelm_core import tracking
from qelm_core.classify.config import ClassifyParams, ClassifyPaths
from qelm_core.registry import gate_tags, register_challenger
from qelm_core.weights import tree_digest


def test_data_hash(paths: ClassifyPaths, datasets: list[str]) -> str:
    """sha256 over every dataset's prepared test split: versions are compared only on the same test data."""
    h = hashlib.sha256()
    for name in sorted(datasets):
        h.update(name.encode() + b"\0" + (paths.prepared / name / "test.jsonl").read_bytes())
    return h.hexdigest()


def run(params: ClassifyParams, paths: ClassifyPaths) -> dict:
    tracking.configure(paths)
    name, seed = params.registry.model_name, params.seeds[0]
    evaluation = json.loads((paths.metrics / "classify_eval.json").read_text())
    per_seed = json.loads((paths.reports / "classify_per_seed.json").read_text())
    artifacts = {ds: paths.model_dir(ds, seed, "quantum") for ds in params.datasets}
    own = [next(r for r in per_seed[ds] if r["seed"] == seed)["quantum_exact"]["accuracy"] for ds in params.datasets]
    tags = {"seed": str(seed), "features": params.student.features,
            **gate_tags("accuracy_test", "higher", sum(own) / len(own), test_data_hash(paths, params.datasets))}
    for ds, result in evaluation["datasets"].items():
        s = result["summary"]
        tags.update({f"{ds}.accuracy_quantum": f"{s['quantum_exact']['accuracy_mean']:.4f}",
                     f"{ds}.accuracy_mlp": f"{s['mlp']['accuracy_mean']:.4f}",
                     f"{ds}.accuracy_teacher": f"{s['teacher']['accuracy_mean']:.4f}"})
    with tracking.pipeline_run(paths, params, "classify-register", tree_digest(paths.models),
                               tracking.CLASSIFY_EXPERIMENT) as run_id:
        uri = tracking.log_classifier_model(artifacts, {"datasets": list(params.datasets), "seed": seed})
        return register_challenger(uri, name, {**tags, "run_id": run_id}, paths.metrics / "classify_register.json")
