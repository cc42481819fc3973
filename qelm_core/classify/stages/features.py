"""Stage classify-features: MiniLM embeddings and the teacher's mean-pooled hidden states, every split."""
from __future__ import annotations

import numpy as np
from safetensors.numpy import save_file

from qelm_core.classify.config import ClassifyParams, ClassifyPaths
from qelm_core.classify.data import SPLITS, load_prepared
from qelm_core.classify.features import encode, load_minilm, load_teacher_encoder, teacher_param_counts
from qelm_core.io import atomic_dir, atomic_write_json
from qelm_core.progress import progress_bar


def run(params: ClassifyParams, paths: ClassifyPaths) -> dict:
    fp = params.features
    encoders = {"teacher": lambda: load_teacher_encoder(fp.teacher_model, fp.teacher_layer, fp.teacher_max_tokens,
                                                        fp.teacher_dtype)}
    if params.student.features == "minilm":
        encoders["minilm"] = lambda: load_minilm(fp.encoder_max_tokens)
    batch = {"teacher": fp.teacher_batch_size, "minilm": fp.encoder_batch_size}
    data = {name: load_prepared(paths.prepared, name) for name in params.datasets}
    stats: dict = {}
    with atomic_dir(paths.features) as tmp, progress_bar() as bar:
        tensors: dict[str, dict] = {name: {} for name in data}
        for kind, build in encoders.items():
            encoder = build()  # tokenizer now, weights only if a shard is missing
            for name, prep in data.items():
                for split in SPLITS:
                    x, st = encode(prep.texts[split], encoder, paths.cache / kind, fp.shard_size, batch[kind],
                                   bar, f"{kind} {name}/{split}")
                    tensors[name][f"{kind}.{split}"] = np.ascontiguousarray(x)
                    for key, value in st.items():
                        stats.setdefault(name, {}).setdefault(kind, {}).setdefault(key, 0)
                        stats[name][kind][key] += value
        for name, t in tensors.items():
            save_file(t, str(tmp / f"{name}.safetensors"))
    for name in stats:
        for kind, st in stats[name].items():
            st["seconds"] = round(st["seconds"], 1)
            st["tokens_per_s"] = round(st["tokens_encoded"] / st["seconds"], 1) if st["seconds"] else None
    stats["teacher_params"] = teacher_param_counts(fp.teacher_model, fp.teacher_layer)
    atomic_write_json(paths.metrics / "classify_features.json", stats)
    return stats
