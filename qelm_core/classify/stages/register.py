"""Stage classify-register: log the quantum classifiers (first seed, every dataset) as one MLflow pyfunc,
register a new version of `qelm-classifier` aliased `challenger`; the first version is also `champion`."""
from __future__ import annotations

import json

from qelm_core import tracking
from qelm_core.classify.config import ClassifyParams, ClassifyPaths
from qelm_core.io import atomic_write_json


def run(params: ClassifyParams, paths: ClassifyPaths) -> dict:
    tracking.configure(paths)
    name, seed = params.registry.model_name, params.seeds[0]
    evaluation = json.loads((paths.metrics / "classify_eval.json").read_text())
    run_id = json.loads((paths.metrics / "classify_train.json").read_text())["mlflow_run_id"]
    artifacts = {ds: paths.model_dir(ds, seed, "quantum") for ds in params.datasets}
    tags = {"seed": str(seed), "features": params.student.features}
    for ds, result in evaluation["datasets"].items():
        s = result["summary"]
        tags.update({f"{ds}.accuracy_quantum": f"{s['quantum_exact']['accuracy_mean']:.4f}",
                     f"{ds}.accuracy_mlp": f"{s['mlp']['accuracy_mean']:.4f}",
                     f"{ds}.accuracy_teacher": f"{s['teacher']['accuracy_mean']:.4f}"})
    with tracking.classify_run(paths, params, run_id=run_id, stage="classify-register"):
        uri = tracking.log_classifier_model(artifacts, {"datasets": list(params.datasets), "seed": seed})
        with tracking.registered_version(uri, name, {**tags, "run_id": run_id}) as version:  # undone on failure
            result = {"model_name": name, "version": int(version), "challenger": int(version)}
            if tracking.alias_version(name, "champion") is None:
                tracking.set_alias(name, "champion", version, "first model: no champion yet")
            result["champion"] = int(tracking.alias_version(name, "champion").version)
            atomic_write_json(paths.metrics / "classify_register.json", result)
    return result

if __name__ == "__main__":
    from qelm_core.classify.stages import main

    main("register")
