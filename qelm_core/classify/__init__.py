"""Text classification: an LLM teacher (SmolLM2 hidden states + a linear head) distilled into a small
variational-circuit classifier, beside classical students of equal size (the QD-LLM setting).

Pipeline (classify/dvc.yaml, params in classify/params.yaml):
    prepare  -> classify/data/prepared   (texts, labels, stratified splits; GX-validated)
    features -> classify/data/features   (MiniLM sentence embeddings + teacher hidden states; cached)
    teacher  -> classify/data/teacher    (linear head on the teacher states -> soft labels)
    train    -> classify/models          (quantum, MLP, logistic regression per dataset and seed)
    evaluate -> metrics/classify_eval.json, reports/classify_results.md (exact + noisy hardware)
    register -> MLflow registry `qelm-classifier`
"""
